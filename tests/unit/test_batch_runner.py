"""The BatchRunner's pure parts (llm_serving.batch.runner): the bound on batch rows per engine, and
how a row of Ray Data's Serve deployment processor becomes an output or error line, and (on a real
store, with the engine call answering at once) how a batch ends when its window passes. Running
real batches is the e2e tests' (tests/e2e/test_batch_api.py)."""

import json

import numpy as np
import pytest

from llm_serving.batch import formats as formats_module
from llm_serving.batch import runner as runner_module
from llm_serving.batch.formats import output_line
from llm_serving.batch.runner import BatchRunner, RowPacer, _result_of_row, rows_in_flight


@pytest.mark.parametrize("share, slots, replicas, expected", [
    (0.25, 64, 1, 16), (0.25, 64, 2, 32), (0.01, 10, 1, 1), (1.0, 8, 0, 8),
])
def test_batch_rows_hold_at_most_their_share_of_the_engines_slots(share, slots, replicas, expected):
    assert rows_in_flight(share, slots, replicas) == expected


def line_of(row):
    return json.loads(_result_of_row(row)["result"])


class FakeTime:
    """A clock that only sleeps move."""

    def __init__(self):
        self.now = 100.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rows_start_at_most_once_per_interval():
    time = FakeTime()
    pacer = RowPacer(time.clock, time.sleep)
    starts = []
    for _ in range(5):
        pacer.wait_turn(0.25)
        starts.append(time.now)
    assert starts == [100.0, 100.25, 100.5, 100.75, 101.0]


def test_time_the_engine_took_counts_toward_the_next_rows_wait():
    time = FakeTime()
    pacer = RowPacer(time.clock, time.sleep)
    pacer.wait_turn(0.5)
    time.now += 0.3  # the engine answered a block meanwhile
    pacer.wait_turn(0.5)
    assert time.slept == [pytest.approx(0.2)]
    time.now += 2.0  # a long answer: no wait, and no burst to make up for it
    pacer.wait_turn(0.5)
    pacer.wait_turn(0.5)
    assert time.slept == [pytest.approx(0.2), pytest.approx(0.5)]


def test_no_bound_never_waits():
    time = FakeTime()
    pacer = RowPacer(time.clock, time.sleep)
    for _ in range(3):
        pacer.wait_turn(0.0)
    assert time.slept == []


def test_an_answered_row_is_an_output_line_with_the_engines_body():
    row = {"custom_id": "a", "body": "{}", "method": "chat", "request_id": "0", "time_taken": 0.1,
           "batch_uuid": "u", "__inference_error__": "", "id": "chatcmpl-1", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
           "usage": {"prompt_tokens": 3}}
    line = line_of(row)
    assert line["custom_id"] == "a" and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"] == "chatcmpl-1"
    assert line["response"]["body"] == {"id": "chatcmpl-1", "object": "chat.completion", "usage": {"prompt_tokens": 3},
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}


def test_arrow_arrays_in_a_row_become_json_lists():
    row = {"custom_id": "e", "__inference_error__": "", "data": [{"embedding": np.array([0.5, 0.25])}]}
    assert line_of(row)["response"]["body"]["data"] == [{"embedding": [0.5, 0.25]}]


def test_an_engine_refusal_is_an_error_line_with_its_status():
    row = {"custom_id": "b", "__inference_error__": "",
           "error": {"message": "too long", "type": "BadRequestError", "code": 400}}
    line = line_of(row)
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "too long"


def test_a_failed_call_is_an_error_line_naming_the_failure():
    line = line_of({"custom_id": "c", "__inference_error__": "TimeoutError: Request timed out after 600s"})
    assert line["response"]["status_code"] == 500 and "timed out" in line["response"]["body"]["error"]["message"]


class Clock:
    """The runner's `now`, moved by the test."""

    def __init__(self):
        self.at = 1_000_000

    def __call__(self) -> int:
        return self.at


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A Clock in place of `now` where the runner and the batch objects read the time."""
    clock = Clock()
    monkeypatch.setattr(runner_module, "now", clock)
    monkeypatch.setattr(formats_module, "now", clock)
    return clock


def batch_with_lines(store, count: int, window_s: int, allowed=None):
    from llm_serving.batch.formats import batch_object, file_object, jsonl

    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}]}} for i in range(count)]
    content = jsonl(lines)
    record = file_object("file-in", len(content), "in.jsonl", "batch", "alice")
    store.put_file(record, content)
    batch = batch_object("batch_1", "/v1/chat/completions", "file-in", "alice", allowed, None, window_s=window_s)
    store.put_batch(batch)
    return batch


class RunnerWithStandInEngine(BatchRunner):
    """The runner's bookkeeping on a real store; the engine call answers each line at once and
    calls `after_each` (which moves the clock or reloads keys), as rows would arrive from Ray Data."""

    after_each = staticmethod(lambda answered: None)

    def _results_from_engine(self, batch, model, lines):
        for answered, line in enumerate(lines, start=1):
            yield output_line(line.custom_id, 200, {"object": "chat.completion", "choices": []})
            self.after_each(answered)


def runner_on(tmp_path, **batch_config) -> RunnerWithStandInEngine:
    models = {"tiny": {"task": "generate", "max_ongoing_requests": 8, "max_replicas": 1}}
    return RunnerWithStandInEngine({"store_uri": str(tmp_path), **batch_config}, {}, models)


def file_lines(store, file_id):
    return [json.loads(raw) for raw in store.file_content(file_id).decode().splitlines()] if file_id else []


def window_passes_after(clock, answered: int, window_s: int):
    """The runner's after_each hook that moves the clock past a batch's window once `answered` lines are done."""
    def hook(done: int) -> None:
        if done == answered:
            clock.at += window_s + 1

    return hook


def test_a_batch_past_its_window_ends_expired_with_the_unrun_lines_as_batch_expired(tmp_path, clock):
    runner = runner_on(tmp_path, completion_window_s=60)
    batch = batch_with_lines(runner.store, 10, window_s=60)
    assert batch["expires_at"] == clock.at + 60

    runner.after_each = window_passes_after(clock, answered=3, window_s=60)  # while the fourth line runs
    runner._process(batch["id"])
    ended = runner.store.batch(batch["id"])
    assert ended["status"] == "expired" and ended["expired_at"] == clock.at
    output, errors = file_lines(runner.store, ended["output_file_id"]), file_lines(runner.store, ended["error_file_id"])
    # The line that finished as the window passed stays in the output; the rest never ran.
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2", "r3"]
    assert [line["custom_id"] for line in errors] == [f"r{i}" for i in range(4, 10)]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in errors)
    assert ended["request_counts"] == {"total": 10, "completed": 4, "failed": 6}


def test_a_batch_that_finishes_in_its_window_completes(tmp_path, clock):
    runner = runner_on(tmp_path, completion_window_s=60)
    batch = batch_with_lines(runner.store, 4, window_s=60)

    runner.after_each = window_passes_after(clock, answered=4, window_s=60)  # after the last line
    runner._process(batch["id"])
    ended = runner.store.batch(batch["id"])
    assert ended["status"] == "completed" and ended["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert ended["error_file_id"] is None


def keys_file_with(path, **models_by_key):
    """A keys document: each key name with its allowed models (None: every model)."""
    entries = [{"name": name, "key": f"sk-{name}-0123456789abcdef", **({"models": models} if models is not None else {})}
               for name, models in models_by_key.items()]
    path.write_text(json.dumps({"keys": entries}))
    return {"file": str(path)}


def ended_lines(runner, batch_id):
    ended = runner.store.batch(batch_id)
    return ended, file_lines(runner.store, ended["output_file_id"]), file_lines(runner.store, ended["error_file_id"])


def test_lines_are_checked_against_the_keys_as_they_are_when_the_lines_run(tmp_path):
    keys = tmp_path / "keys.json"
    sources = keys_file_with(keys, alice=["tiny"])
    runner = runner_on(tmp_path / "store")
    runner.api_keys = runner_module.ApiKeysConfig.model_validate(sources)
    batch = batch_with_lines(runner.store, 3, window_s=3600, allowed=["tiny"])
    keys_file_with(keys, alice=["another-model"])  # reloaded after the batch was created
    runner._process(batch["id"])
    ended, output, errors = ended_lines(runner, batch["id"])
    assert ended["status"] == "completed" and output == []
    assert [line["custom_id"] for line in errors] == ["r0", "r1", "r2"]
    assert {line["response"]["status_code"] for line in errors} == {403}
    assert {line["response"]["body"]["error"]["code"] for line in errors} == {"model_not_allowed"}
    assert ended["request_counts"] == {"total": 3, "completed": 0, "failed": 3}


def test_a_key_given_the_model_since_creation_runs_its_lines(tmp_path):
    keys = tmp_path / "keys.json"
    sources = keys_file_with(keys, alice=None)  # every model now; only another one at creation
    runner = runner_on(tmp_path / "store")
    runner.api_keys = runner_module.ApiKeysConfig.model_validate(sources)
    batch = batch_with_lines(runner.store, 2, window_s=3600, allowed=["another-model"])
    runner._process(batch["id"])
    ended, output, errors = ended_lines(runner, batch["id"])
    assert [line["custom_id"] for line in output] == ["r0", "r1"] and errors == []


def test_a_removed_key_runs_no_more_lines(tmp_path):
    keys = tmp_path / "keys.json"
    sources = keys_file_with(keys, alice=None, bob=None)
    runner = runner_on(tmp_path / "store")
    runner.api_keys = runner_module.ApiKeysConfig.model_validate(sources)
    batch = batch_with_lines(runner.store, 2, window_s=3600)
    keys_file_with(keys, bob=None)
    runner._process(batch["id"])
    ended, output, errors = ended_lines(runner, batch["id"])
    assert output == [] and {line["response"]["body"]["error"]["code"] for line in errors} == {"invalid_api_key"}
    assert {line["response"]["status_code"] for line in errors} == {401}


def test_unreadable_keys_leave_the_models_the_key_had_at_creation(tmp_path):
    keys = tmp_path / "keys.json"
    sources = keys_file_with(keys, alice=None)
    runner = runner_on(tmp_path / "store")
    runner.api_keys = runner_module.ApiKeysConfig.model_validate(sources)
    batch = batch_with_lines(runner.store, 2, window_s=3600, allowed=["tiny"])
    keys.write_text("keys: [{name: alice}]")  # no secret: the gateway would refuse it too
    runner._process(batch["id"])
    ended, output, errors = ended_lines(runner, batch["id"])
    assert [line["custom_id"] for line in output] == ["r0", "r1"] and errors == []
