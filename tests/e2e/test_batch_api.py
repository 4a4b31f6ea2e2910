"""The OpenAI Batch API on the shared dev-cpu instance (values/dev-cpu.yaml enables it), through
the official openai client: files, batches run by Ray Data on the app's own engines, answers equal
to the online ones, per-line errors, validation failures, cancel with partial output, another key
seeing none of it, and Ray Data's workers running at a lower CPU priority than the engines."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import psutil
import pytest
import yaml

from tests.e2e.dev_cpu import CHAT_MODEL, EMBED_MODEL
from tests.e2e.servers import BATCH_WORKER_TITLES, process_tree, thread_niceness

LINES = 200
MAX_TOKENS = 16
BATCH_TIMEOUT_S = 300  # generous: a loaded CI machine runs 400 lines in 30-110 s


def chat_body(i: int, max_tokens: int = MAX_TOKENS, **extra) -> dict:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": f"Question {i}: what is the colour of item {i * 7}?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


def embed_body(i: int) -> dict:
    return {"model": EMBED_MODEL, "input": f"Document {i} is about the number {i * 13} and its neighbours."}


def jsonl_file(lines, name="input.jsonl"):
    return (name, io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines)))


def line(custom_id: str, url: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def upload(client: openai.OpenAI, lines) -> str:
    return client.files.create(file=jsonl_file(lines), purpose="batch").id


def wait_until_done(client: openai.OpenAI, batch_id: str, timeout_s: float = BATCH_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            batch = client.batches.retrieve(batch_id)
        except openai.APIConnectionError:  # a poll dropped by an overloaded machine's proxy: poll again
            time.sleep(1)
            continue
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    pytest.fail(f"batch {batch_id} did not finish within {timeout_s} s: {client.batches.retrieve(batch_id)}")


def read_lines(client: openai.OpenAI, file_id) -> dict:
    """An output or error file's lines by custom_id."""
    assert file_id is not None
    text = client.files.content(file_id).text
    lines = [json.loads(raw) for raw in text.splitlines() if raw]
    by_id = {entry["custom_id"]: entry for entry in lines}
    assert len(by_id) == len(lines), "one line per custom_id"
    return by_id


@pytest.fixture(scope="module")
def finished_batches(client):
    """A chat batch and an embeddings batch of LINES lines each, created together and run to the end;
    the chat file carries two lines the engine refuses (max_tokens beyond the context window)."""
    chat_lines = [line(f"chat-{i}", "/v1/chat/completions", chat_body(i)) for i in range(LINES)]
    refused = {"chat-too-long-a", "chat-too-long-b"}
    chat_lines += [line(custom_id, "/v1/chat/completions", chat_body(0, max_tokens=100_000)) for custom_id in refused]
    embed_lines = [line(f"embed-{i}", "/v1/embeddings", embed_body(i)) for i in range(LINES)]
    chat_file, embed_file = upload(client, chat_lines), upload(client, embed_lines)
    started = time.monotonic()
    chat = client.batches.create(
        input_file_id=chat_file, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "e2e"}
    )
    embed = client.batches.create(input_file_id=embed_file, endpoint="/v1/embeddings", completion_window="24h")
    assert chat.status == "validating" and chat.metadata == {"run": "e2e"}
    chat, embed = wait_until_done(client, chat.id), wait_until_done(client, embed.id)
    print(f"\n{2 * LINES + 2} batch lines done in {time.monotonic() - started:.1f} s")
    return {"chat": chat, "embed": embed, "chat_file": chat_file, "refused": refused}


def test_chat_batch_answers_equal_the_online_answers(client, finished_batches):
    batch = finished_batches["chat"]
    assert batch.status == "completed", batch
    assert batch.request_counts.total == LINES + 2
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 2)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = read_lines(client, batch.output_file_id)
    assert set(output) == {f"chat-{i}" for i in range(LINES)}

    def online(i):
        return client.chat.completions.create(**chat_body(i)).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(online, range(LINES)))
    for i, answer in enumerate(answers):
        entry = output[f"chat-{i}"]
        assert entry["id"].startswith("batch_req_") and entry["error"] is None
        assert entry["response"]["status_code"] == 200
        body = entry["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == CHAT_MODEL
        assert body["choices"][0]["message"]["content"] == answer, f"line chat-{i}"


def test_refused_lines_land_in_the_error_file_with_their_custom_id(client, finished_batches):
    batch = finished_batches["chat"]
    errors = read_lines(client, batch.error_file_id)
    assert set(errors) == finished_batches["refused"]
    for entry in errors.values():
        assert entry["response"]["status_code"] == 400
        assert entry["response"]["body"]["error"]["message"]


def test_embedding_batch_answers_equal_the_online_answers(client, finished_batches):
    batch = finished_batches["embed"]
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (LINES, LINES, 0)
    assert batch.error_file_id is None
    output = read_lines(client, batch.output_file_id)
    online = client.embeddings.create(model=EMBED_MODEL, input=[embed_body(i)["input"] for i in range(LINES)])
    for i, item in enumerate(online.data):
        vector = output[f"embed-{i}"]["response"]["body"]["data"][0]["embedding"]
        assert len(vector) == 384
        np.testing.assert_allclose(vector, item.embedding, atol=1e-4, err_msg=f"line embed-{i}")


def test_files_and_batches_are_listed_newest_first(client, finished_batches):
    page = client.batches.list(limit=1)
    assert page.data[0].id == finished_batches["embed"].id and page.has_more
    after = client.batches.list(limit=1, after=page.data[0].id)
    assert after.data[0].id == finished_batches["chat"].id
    file = client.files.retrieve(finished_batches["chat_file"])
    assert (file.object, file.purpose, file.status) == ("file", "batch", "processed") and file.bytes > 0
    output_file = client.files.retrieve(finished_batches["chat"].output_file_id)
    assert output_file.purpose == "batch_output"
    assert finished_batches["chat_file"] in {f.id for f in client.files.list(purpose="batch")}


def test_a_finished_batch_cannot_be_cancelled(client, finished_batches):
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished_batches["chat"].id)


def test_another_key_sees_neither_the_files_nor_the_batches(chat_only_client, finished_batches):
    batch = finished_batches["chat"]
    for call in (
        lambda: chat_only_client.files.retrieve(finished_batches["chat_file"]),
        lambda: chat_only_client.files.content(batch.output_file_id),
        lambda: chat_only_client.files.delete(finished_batches["chat_file"]),
        lambda: chat_only_client.batches.retrieve(batch.id),
        lambda: chat_only_client.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in {b.id for b in chat_only_client.batches.list()}
    assert finished_batches["chat_file"] not in {f.id for f in chat_only_client.files.list()}


def test_lines_naming_a_model_the_key_may_not_use_fail_alone(chat_only_client):
    lines = [line(f"e-{i}", "/v1/embeddings", embed_body(i)) for i in range(3)]
    batch = chat_only_client.batches.create(
        input_file_id=upload(chat_only_client, lines), endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = wait_until_done(chat_only_client, batch.id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    errors = read_lines(chat_only_client, batch.error_file_id)
    assert set(errors) == {"e-0", "e-1", "e-2"}
    assert {e["response"]["status_code"] for e in errors.values()} == {403}
    assert {e["response"]["body"]["error"]["code"] for e in errors.values()} == {"model_not_allowed"}


def test_lines_are_checked_against_the_key_as_it_is_when_they_run(gateway, chat_only_client):
    """The chat-only key loses the chat model after it uploaded its file: the Secret's file changes
    (the gateway, not reloaded, still lets it create the batch). The runner reads the keys as the
    lines start, so they fail 403 rather than run on a model the key no longer has."""
    keys_file = gateway.log_path.parent / "api-keys.yaml"  # conftest's gateway keeps its keys beside its log
    original = keys_file.read_text()
    document = yaml.safe_load(original)
    for key in document["keys"]:
        if key["name"] == "chat-only":
            key["models"] = [EMBED_MODEL]
    file_id = upload(chat_only_client, [line(f"c-{i}", "/v1/chat/completions", chat_body(i)) for i in range(2)])
    try:
        keys_file.write_text(yaml.safe_dump(document))
        batch = chat_only_client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_until_done(chat_only_client, batch.id)
    finally:
        keys_file.write_text(original)
    assert batch.status == "completed" and batch.output_file_id is None
    errors = read_lines(chat_only_client, batch.error_file_id)
    assert set(errors) == {"c-0", "c-1"}
    assert {e["response"]["body"]["error"]["code"] for e in errors.values()} == {"model_not_allowed"}


def test_an_invalid_input_file_fails_the_batch_naming_its_lines(client):
    lines = [
        line("a", "/v1/chat/completions", chat_body(1)),
        line("a", "/v1/chat/completions", chat_body(2)),  # duplicate custom_id
        line("b", "/v1/embeddings", embed_body(3)),  # another endpoint
        line("c", "/v1/chat/completions", {**chat_body(4), "model": "no-such-model"}),
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_until_done(client, batch.id)
    assert batch.status == "failed" and batch.failed_at
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("duplicate_custom_id", 2),
        ("mismatched_endpoint", 3),
        ("model_not_found", 4),
    ]
    assert batch.output_file_id is None and batch.error_file_id is None


def test_bad_requests_get_openai_errors(client):
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-x", endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=jsonl_file([{"a": 1}]), purpose="fine-tune")


def test_cancel_mid_way_keeps_the_finished_lines(client):
    # Long answers (no early stop), so the batch is still running when the cancel comes.
    lines = [line(f"long-{i}", "/v1/chat/completions", chat_body(i, max_tokens=128, ignore_eos=True)) for i in range(600)]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while client.batches.retrieve(batch.id).request_counts.completed == 0:
        assert time.monotonic() < deadline, "no line finished"
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    # The rows in flight finish first; on a loaded machine that and Ray Data's stop take a while,
    # far less than the rest of the 600 lines would.
    batch = wait_until_done(client, batch.id, timeout_s=180)
    assert batch.status == "cancelled" and batch.cancelled_at
    output = read_lines(client, batch.output_file_id)
    assert 0 < len(output) < len(lines)
    assert batch.request_counts.completed == len(output) and batch.request_counts.total == len(lines)
    for custom_id, entry in output.items():
        assert custom_id.startswith("long-") and entry["response"]["body"]["usage"]["completion_tokens"] == 128


def niceness_by_process(gateway) -> dict:
    """{(pid, title): nice values of its threads} of the app's processes, Ray Data's batch workers
    under their title's first word."""
    found = {}
    for process in process_tree(gateway.process.pid):
        try:
            title = " ".join(process.cmdline()).strip()
            key = title.split("(")[0] if title.startswith(BATCH_WORKER_TITLES) else title
            found.setdefault(key, {})[process.pid] = (process.nice(), thread_niceness(process))
        except psutil.Error:  # a task worker that ended meanwhile
            continue
    return found


def lowered_values(samples: list, title: str) -> set:
    """Nice values of the threads of `title`'s processes, each process from its second sample on: a
    worker takes its title when its task starts and lowers itself at its first row, a moment later."""
    seen, values = set(), set()
    for sample in samples:
        for pid, (_, threads) in sample.get(title, {}).items():
            if pid in seen:
                values |= threads
            seen.add(pid)
    return values


def test_ray_data_workers_give_way_to_online_work(gateway, client):
    """While a batch runs, every thread of Ray Data's map actor (which sends rows to the engines) and
    of its postprocess workers runs at batch.worker_niceness (19 by default, below the 15 Ray starts
    its workers at); the engine replicas, their vLLM processes and the gateway keep the values they
    had before the batch, and the runner replica lowers only its batch thread."""
    before = niceness_by_process(gateway)
    # Long enough to outlast the sampling (it is cancelled after).
    lines = [line(f"nice-{i}", "/v1/chat/completions", chat_body(i, max_tokens=128, ignore_eos=True)) for i in range(1000)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    try:
        deadline = time.monotonic() + BATCH_TIMEOUT_S
        while client.batches.retrieve(batch.id).request_counts.completed == 0:
            assert time.monotonic() < deadline, "no line finished"
            time.sleep(0.2)
        samples = []
        sampled_until = time.monotonic() + 5
        while time.monotonic() < sampled_until:
            samples.append(niceness_by_process(gateway))
            time.sleep(0.2)
    finally:
        if client.batches.retrieve(batch.id).status == "in_progress":
            client.batches.cancel(batch.id)
        batch = wait_until_done(client, batch.id, timeout_s=120)
    assert batch.status == "cancelled", "the batch ended while its workers were sampled; make it longer"
    batch_workers = {title: lowered_values(samples, title) for title in ("ray::MapWorker", "ray::Map")}
    print(f"\nbatch workers' thread nice values: {batch_workers}")
    assert batch_workers["ray::MapWorker"] == {19}, batch_workers  # seen, and every thread lowered
    assert batch_workers["ray::Map"] <= {19}, batch_workers  # postprocess tasks, when one was caught
    runner = [title for title in before if title.startswith("ray::ServeReplica:") and ":BatchRunner" in title]
    assert len(runner) == 1, before
    (runner_main_before, _), = before[runner[0]].values()
    assert runner_main_before != 19, before[runner[0]]
    for sample in samples:
        (main, threads), = sample[runner[0]].values()
        assert main == runner_main_before and 19 in threads, (runner[0], main, threads)
    # Idle Ray workers are left out: one of the batch's pool may have run a postprocess task.
    others = [title for title in before
              if title and title not in batch_workers and title not in runner and not title.startswith("ray::IDLE")]
    assert sum("GatewayLLMServer" in title for title in others) >= 2, others  # both engines are looked at
    for title in others:
        for sample in samples:
            for pid, (main, threads) in sample.get(title, {}).items():
                if pid in before[title]:  # the same process: no thread of it changed to a new value
                    assert main == before[title][pid][0] and threads <= before[title][pid][1], (title, pid)
                    assert 19 not in threads, (title, pid, threads)
