"""The BatchRunner: one Serve replica, bound into the app beside the gateway, that validates and runs
batches with Ray Data and `ray.data.llm`'s Serve deployment processor, sending each line to the
app's own engine deployments (the same LLMServer replicas online requests use).

- The gateway creates a batch record (`validating`) and calls `submit`; a cancel goes through
  `cancel`. After creation the runner is the only writer of a batch record, so a status never goes
  backwards between two writers.
- Batches run one at a time, at a bounded number of rows in flight per engine (batch.engine_share
  of its max_ongoing_requests), so online requests keep most of each engine's slots, and, with
  batch.max_rows_per_s, at a bounded rate (paced where rows become engine calls).
- Results stream back to this replica (iter_rows) and are written to the store in chunks as they
  come: a cancel ends `cancelled` with the finished lines, and a restarted runner skips the
  custom_ids already done (at start it picks up every unfinished batch in the store).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import queue
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from llm_serving.batch.formats import (
    FINAL_STATUSES,
    MAX_LISTED_ERRORS,
    OUTPUT_PURPOSE,
    UNFINISHED_STATUSES,
    InputLine,
    error_item,
    errors_list,
    expired_line,
    failed_line,
    file_object,
    jsonl,
    new_id,
    now,
    output_line,
    parse_input_file,
    set_status,
)
from llm_serving.batch.priority import lower_batch_worker_once, lower_thread
from llm_serving.batch.store import BatchStore, NotFound
from llm_serving.config import ApiKeysConfig, BatchConfig
from llm_serving.gateway.api_keys import ApiKeyStore, KeysFileError

logger = logging.getLogger(__name__)

# The engine method and request class per endpoint (LLMServer.chat / completions / embeddings).
ENGINE_CALLS = {
    "/v1/chat/completions": ("chat", "ChatCompletionRequest"),
    "/v1/completions": ("completions", "CompletionRequest"),
    "/v1/embeddings": ("embeddings", "EmbeddingCompletionRequest"),
}
# Result lines are written to the store at least this often while a batch runs (and the batch's
# request_counts updated), and at most this many lines per chunk.
FLUSH_INTERVAL_S = 1.0
FLUSH_LINES = 256


def request_classes() -> Dict[str, Any]:
    """vLLM's request classes by name, for the processor's dtype_mapping."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

    from llm_serving._ray import EmbeddingCompletionRequest

    return {
        "ChatCompletionRequest": ChatCompletionRequest,
        "CompletionRequest": CompletionRequest,
        "EmbeddingCompletionRequest": EmbeddingCompletionRequest,
    }


def rows_in_flight(engine_share: float, max_ongoing_requests: int, replicas: int) -> int:
    """Batch rows one model's engines may hold at once: the share of their slots, at least 1."""
    return max(1, math.floor(engine_share * max_ongoing_requests * max(1, replicas)))


class BatchCancelled(Exception):
    pass


class BatchExpired(Exception):
    """The batch's expires_at passed before its lines were all run."""


def expired(batch: Dict[str, Any]) -> bool:
    return now() >= batch["expires_at"]


def _app_and_deployment(engine: Any) -> Tuple[str, str]:
    """(application, deployment) of an engine: a handle's own, or a deployment name in this replica's
    application."""
    if isinstance(engine, str):
        from ray import serve

        return serve.get_replica_context().app_name, engine
    return engine.app_name, engine.deployment_name


class BatchRunner:
    """Serve deployment class; see the module docstring."""

    def __init__(
        self,
        config: Dict[str, Any],
        engines: Dict[str, Any],
        models: Dict[str, Dict[str, Any]],
        api_keys: Optional[Dict[str, Any]] = None,
    ):
        """`engines`: the engine deployment handle per model, or the name of a deployment of this
        application (the direct model's, which binds this runner); `models`: per model its task
        (generate or embed), max_ongoing_requests and max_replicas; `api_keys`: the gateway's keys
        sources (ApiKeysConfig) when it checks keys, read again as a batch's lines start."""
        self.config = BatchConfig.model_validate(config)
        self.api_keys = ApiKeysConfig.model_validate(api_keys) if api_keys is not None else None
        self.store = BatchStore(self.config.store_uri)
        self.engines = {name: _app_and_deployment(engine) for name, engine in engines.items()}
        self.models = models
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: Set[str] = set()
        self._cancelled: Set[str] = set()
        self._lock = threading.Lock()
        self._metrics = _TokenMetrics()
        threading.Thread(target=self._work_forever, name="batch-runner", daemon=True).start()
        self._resume_unfinished()

    # Called by the gateway

    async def submit(self, batch_id: str) -> None:
        self._enqueue(batch_id)

    async def cancel(self, batch_id: str) -> Dict[str, Any]:
        """Mark the batch cancelling; the worker ends it (`cancelled`, with the lines done so far)."""
        with self._lock:
            batch = self.store.batch(batch_id)
            if batch["status"] in FINAL_STATUSES or batch["status"] == "cancelling":
                return batch
            self._cancelled.add(batch_id)
            set_status(batch, "cancelling")
            self.store.put_batch(batch)
        self._enqueue(batch_id)  # a batch not running yet is ended by the worker in turn
        return batch

    # The worker

    def _enqueue(self, batch_id: str) -> None:
        with self._lock:
            if batch_id in self._queued:
                return
            self._queued.add(batch_id)
        self._queue.put(batch_id)

    def _resume_unfinished(self) -> None:
        for batch in sorted(self.store.batches(), key=lambda b: b["created_at"]):
            if batch["status"] in UNFINISHED_STATUSES:
                logger.info("resuming batch %s (%s)", batch["id"], batch["status"])
                if batch["status"] == "cancelling":
                    self._cancelled.add(batch["id"])
                self._enqueue(batch["id"])

    def _work_forever(self) -> None:
        # This thread drives Ray Data (its executor threads start from here and inherit the value);
        # the replica's other threads answer the gateway at the priority Ray gave them (batch/priority.py).
        lower_thread(self.config.worker_niceness)
        while True:
            batch_id = self._queue.get()
            with self._lock:
                self._queued.discard(batch_id)
            try:
                self._process(batch_id)
            except Exception as error:  # the batch fails visibly; the runner goes on with the next
                logger.exception("batch %s failed", batch_id)
                self._fail(batch_id, "batch_runner_error", f"The batch could not be run: {error}")

    def _process(self, batch_id: str) -> None:
        batch = self.store.batch(batch_id)
        if batch["status"] in FINAL_STATUSES:
            return
        if batch["status"] == "validating":
            lines = self._validate(batch)
            if lines is None:
                return
        else:
            lines = self._input_lines(batch)
        try:
            if batch_id not in self._cancelled:
                self._run(batch, lines)
        except BatchExpired:
            logger.info("batch %s expired", batch_id)
            self._finalize(batch_id, lines, expire=True)
            return
        except Exception as error:  # failed visibly, with the lines finished before the failure
            logger.exception("batch %s failed while running", batch_id)
            self._finalize(batch_id, lines, failure=f"The batch stopped with an error: {error}"[:1000])
            return
        self._finalize(batch_id, lines)

    def _models_for(self, endpoint: str) -> List[str]:
        task = "embed" if endpoint == "/v1/embeddings" else "generate"
        return sorted(name for name, model in self.models.items() if model["task"] == task)

    def _input_lines(self, batch: Dict[str, Any]) -> List[InputLine]:
        content = self.store.file_content(batch["input_file_id"])
        return parse_input_file(
            content, batch["endpoint"], self._models_for(batch["endpoint"]), self.config.max_lines
        ).lines

    def _validate(self, batch: Dict[str, Any]) -> Optional[List[InputLine]]:
        """Check the whole input file; on any problem the batch fails before a line runs."""
        try:
            content = self.store.file_content(batch["input_file_id"])
        except NotFound:
            self._fail(batch["id"], "file_not_found", f"The input file {batch['input_file_id']} no longer exists.")
            return None
        parsed = parse_input_file(
            content, batch["endpoint"], self._models_for(batch["endpoint"]), self.config.max_lines
        )
        with self._lock:
            batch = self.store.batch(batch["id"])
            if parsed.errors:
                listed = parsed.errors[:MAX_LISTED_ERRORS]
                if len(parsed.errors) > len(listed):
                    listed.append(
                        error_item("more_errors", f"{len(parsed.errors) - len(listed)} more lines are invalid.")
                    )
                batch["errors"] = errors_list(listed)
                set_status(batch, "failed")
            elif batch["status"] == "validating":
                batch["request_counts"] = {"total": len(parsed.lines), "completed": 0, "failed": 0}
                set_status(batch, "in_progress")
            self.store.put_batch(batch)
        return None if parsed.errors else parsed.lines

    def _fail(self, batch_id: str, code: str, message: str) -> None:
        with self._lock:
            try:
                batch = self.store.batch(batch_id)
            except NotFound:
                return
            if batch["status"] in FINAL_STATUSES:
                return
            batch["errors"] = errors_list([error_item(code, message)])
            set_status(batch, "failed")
            self.store.put_batch(batch)

    def _run(self, batch: Dict[str, Any], lines: List[InputLine]) -> None:
        """Send the lines not done yet to their engines, writing results as they come."""
        batch_id = batch["id"]
        done, sequence = self.store.results(batch_id)
        done_ids = {line["custom_id"] for line in done}
        writer = _ResultWriter(self, batch_id, sequence, counted=done)
        todo: Dict[str, List[InputLine]] = {}
        for line in lines:
            if line.custom_id not in done_ids:
                todo.setdefault(line.model, []).append(line)
        try:
            # Checked as results arrive (each line is bounded by request_timeout_s), so a batch
            # ends at most about that long after its expires_at.
            remaining = sum(len(model_lines) for model_lines in todo.values())
            if remaining and expired(batch):
                raise BatchExpired()
            for model, model_lines in todo.items():
                refusal = self._refusal(batch, model)
                if refusal is not None:  # these lines fail alone, the others run
                    for line in model_lines:
                        writer.add(failed_line(line.custom_id, *refusal))
                    remaining -= len(model_lines)
                    continue
                for result in self._results_from_engine(batch, model, model_lines):
                    writer.add(result)
                    remaining -= 1
                    if batch_id in self._cancelled:
                        raise BatchCancelled()
                    if remaining and expired(batch):
                        raise BatchExpired()
        except BatchCancelled:
            logger.info("batch %s cancelled", batch_id)
        finally:
            writer.flush()

    def _refusal(self, batch: Dict[str, Any], model: str) -> Optional[Tuple[int, str, str, str]]:
        """Why the batch's key may not use `model` now (status, message, code, param), or None.

        Keys can be reloaded while a batch waits or runs (a changed Secret), so the keys sources are
        read again as each model's lines start: a key that lost the model, or was removed, runs no
        more of them (lines already sent to the engine finish). Should the sources be unreadable,
        the models the key had at creation stand, as the gateway keeps its keys on a bad document."""
        owner = batch["owner"]
        allowed = batch.get("allowed_models")
        if self.api_keys is not None:
            try:
                current = {key.name: key for key in ApiKeyStore.from_config(self.api_keys).keys}
            except KeysFileError as error:
                logger.warning("batch %s: keys unreadable, using those at creation: %s", batch["id"], error)
            else:
                if owner not in current:
                    return (
                        401,
                        f"The API key {owner!r} that created this batch no longer exists.",
                        "invalid_api_key",
                        "model",
                    )
                allowed = current[owner].allowed_models
        if allowed is not None and model not in allowed:
            return 403, f"This API key ({owner}) may not use model `{model}`.", "model_not_allowed", "model"
        return None

    def _results_from_engine(self, batch: Dict[str, Any], model: str, lines: List[InputLine]) -> Iterable[Dict]:
        import ray.data
        from ray.data.llm import ServeDeploymentProcessorConfig, build_processor

        method, dtype = ENGINE_CALLS[batch["endpoint"]]
        engine = self.models[model]
        in_flight = rows_in_flight(self.config.engine_share, engine["max_ongoing_requests"], engine["max_replicas"])
        app_name, deployment_name = self.engines[model]
        # One actor calling the engine handle, one block of `in_flight` rows per task and one task
        # in flight per actor: at most about `in_flight` rows wait on the engine at a time
        # (ray/llm/_internal/batch/stages/serve_deployment_stage.py sends a block's batch at once).
        ray.data.DataContext.get_current().max_tasks_in_flight_per_actor = 1
        processor = build_processor(
            ServeDeploymentProcessorConfig(
                deployment_name=deployment_name,
                app_name=app_name,
                dtype_mapping=request_classes(),
                batch_size=in_flight,
                concurrency=1,
                should_continue_on_error=True,
                request_timeout_s=self.config.request_timeout_s,
            ),
            preprocess=functools.partial(
                _request_of_row, method=method, dtype=dtype, min_interval_s=_min_interval_s(self.config)
            ),
            postprocess=_result_of_row,
        )
        rows = [{"custom_id": line.custom_id, "body": json.dumps(line.body)} for line in lines]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / in_flight)))
        owner = batch["owner"]
        for row in processor(dataset).iter_rows():
            result = json.loads(row["result"])
            if result["response"]["status_code"] == 200:
                self._metrics.record(model, owner, result["response"]["body"].get("usage"))
            yield result

    def _finalize(
        self, batch_id: str, lines: List[InputLine], failure: Optional[str] = None, expire: bool = False
    ) -> None:
        """Join the result chunks into the output and error files (in input order) and end the batch:
        completed, cancelled, (with a `failure`) failed, or (`expire`) expired, with the lines finished
        before that; an expired batch's unfinished lines go to the error file as `batch_expired`."""
        with self._lock:
            batch = self.store.batch(batch_id)
            if batch["status"] in FINAL_STATUSES:
                return
            cancelled = batch["status"] == "cancelling" or batch_id in self._cancelled
            if not cancelled and failure is None and not expire:
                set_status(batch, "finalizing")
                self.store.put_batch(batch)
        results, _ = self.store.results(batch_id)
        if expire and not cancelled:
            finished = {r["custom_id"] for r in results}
            results += [expired_line(line.custom_id) for line in lines if line.custom_id not in finished]
        order = {line.custom_id: line.line for line in lines}
        results.sort(key=lambda r: order.get(r["custom_id"], 0))
        succeeded = [r for r in results if r["response"] and r["response"]["status_code"] == 200]
        failed = [r for r in results if not (r["response"] and r["response"]["status_code"] == 200)]
        output_id = self._output_file(batch, "output", succeeded)
        error_id = self._output_file(batch, "errors", failed)
        with self._lock:
            batch = self.store.batch(batch_id)
            batch["output_file_id"], batch["error_file_id"] = output_id, error_id
            batch["request_counts"] = {
                "total": batch["request_counts"]["total"] or len(lines),
                "completed": len(succeeded),
                "failed": len(failed),
            }
            if failure is not None:
                batch["errors"] = errors_list([error_item("batch_failed", failure)])
                set_status(batch, "failed")
            elif expire and not cancelled:
                set_status(batch, "expired")
            else:
                set_status(batch, "cancelled" if cancelled else "completed")
            self.store.put_batch(batch)
            self._cancelled.discard(batch_id)

    def _output_file(self, batch: Dict[str, Any], kind: str, lines: List[Dict[str, Any]]) -> Optional[str]:
        if not lines:
            return None
        content = jsonl(lines)
        record = file_object(
            new_id("file-"), len(content), f"{batch['id']}_{kind}.jsonl", OUTPUT_PURPOSE, batch["owner"]
        )
        self.store.put_file(record, content)
        return record["id"]

    def write_results(self, batch_id: str, sequence: int, lines: List[Dict[str, Any]], counted: List[Dict]) -> None:
        """Write a chunk of result lines and the batch's request_counts so far."""
        self.store.add_results(batch_id, sequence, lines)
        with self._lock:
            batch = self.store.batch(batch_id)
            if batch["status"] not in FINAL_STATUSES:
                ok = sum(1 for r in counted if r["response"]["status_code"] == 200)
                batch["request_counts"] = {**batch["request_counts"], "completed": ok, "failed": len(counted) - ok}
                self.store.put_batch(batch)


def _min_interval_s(config: BatchConfig) -> float:
    return 1.0 / config.max_rows_per_s if config.max_rows_per_s else 0.0


class RowPacer:
    """Lets rows start at least `interval_s` apart in this process: the pipeline's one map actor,
    which turns every row into an engine call, so this bounds the whole batch's rate. A row waits
    only for the one before it, so time the engine took on earlier rows counts toward the wait."""

    def __init__(self, clock=time.monotonic, sleep=time.sleep):
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next_start = 0.0

    def wait_turn(self, interval_s: float) -> None:
        if interval_s <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start)
            self._next_start = start + interval_s
        if start > now:
            self._sleep(start - now)


_ROW_PACER = RowPacer()


def _request_of_row(row: Dict[str, Any], method: str, dtype: str, min_interval_s: float = 0.0) -> Dict[str, Any]:
    """An input row as the engine call the Serve deployment stage makes. Runs in Ray Data's map
    actor (fused with that stage: `Map(_preprocess)->MapBatches(ServeDeploymentStageUDF)`, one
    block at a time), which it lowers to batch.worker_niceness on its first row. The stage sends a
    block's rows together once they are all made, so with batch.max_rows_per_s a block's rows go
    out (block size - 1) intervals after its first."""
    lower_batch_worker_once()
    _ROW_PACER.wait_turn(min_interval_s)
    body = json.loads(row["body"])
    return {
        "method": method,
        "dtype": dtype,
        "request_kwargs": {**body, "stream": False} if method != "embeddings" else body,
    }


def _result_of_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A processed row as the batch's result line (a JSON string: rows stay flat for Arrow). Runs
    in Ray Data's postprocess tasks, whose worker it lowers to batch.worker_niceness once."""
    lower_batch_worker_once()
    error = row.get("__inference_error__") or ""
    custom_id = row["custom_id"]
    if error:
        line = failed_line(custom_id, 500, error, "engine_error")
    elif isinstance(row.get("error"), dict):  # the engine's ErrorResponse, as the online API answers it
        engine_error = row["error"]
        status = int(engine_error.get("code") or 500) if str(engine_error.get("code", "")).isdigit() else 400
        line = failed_line(custom_id, status, str(engine_error.get("message", "")), str(engine_error.get("type", "")))
    else:
        body = {k: v for k, v in row.items() if k not in _ROW_BOOKKEEPING}
        line = output_line(custom_id, 200, _plain(body), request_id=str(body.get("id") or "") or None)
    return {"result": json.dumps(line)}


# Columns the processor and our preprocess add to a row; the rest is the engine's response.
_ROW_BOOKKEEPING = {
    "custom_id",
    "body",
    "method",
    "dtype",
    "request_kwargs",
    "request_id",
    "batch_uuid",
    "time_taken",
    "__inference_error__",
}


def _plain(value: Any) -> Any:
    """Arrow hands nested values back as numpy arrays; JSON wants lists."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _ResultWriter:
    """Buffers result lines and writes them as chunks, by time and by count."""

    def __init__(self, runner: BatchRunner, batch_id: str, sequence: int, counted: List[Dict]):
        self.runner, self.batch_id, self.sequence = runner, batch_id, sequence
        self.pending: List[Dict[str, Any]] = []
        self.counted = list(counted)
        self.last_flush = time.monotonic()

    def add(self, line: Dict[str, Any]) -> None:
        self.pending.append(line)
        if len(self.pending) >= FLUSH_LINES or time.monotonic() - self.last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        self.counted.extend(self.pending)
        self.runner.write_results(self.batch_id, self.sequence, self.pending, self.counted)
        self.sequence += 1
        self.pending = []


class _TokenMetrics:
    """Batch lines' tokens in the gateway's per-key token counters (same metric names and tags)."""

    def __init__(self):
        try:
            from ray.serve import metrics

            self.prompt = metrics.Counter(
                "llm_serving_prompt_tokens",
                description="Prompt tokens of answered requests, by model and API key name.",
                tag_keys=("model", "api_key"),
            )
            self.generated = metrics.Counter(
                "llm_serving_generated_tokens",
                description="Generated tokens of answered requests, by model and API key name.",
                tag_keys=("model", "api_key"),
            )
        except Exception:  # outside a Serve replica (unit tests): no metrics
            self.prompt = self.generated = None

    def record(self, model: str, api_key: str, usage: Any) -> None:
        if self.prompt is None or not isinstance(usage, dict):
            return
        tags = {"model": model, "api_key": api_key}
        if usage.get("prompt_tokens"):
            self.prompt.inc(usage["prompt_tokens"], tags=tags)
        if usage.get("completion_tokens"):
            self.generated.inc(usage["completion_tokens"], tags=tags)
