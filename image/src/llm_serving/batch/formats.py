"""OpenAI's Batch API objects and line formats, and the validation of an input file.

Field for field what the `openai` package's types read (openai/types/file_object.py, batch.py,
batch_error.py, batch_request_counts.py): File, Batch, and the output/error file lines
`{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.

Pure functions over dicts and bytes, no Ray and no I/O, so they are unit-tested fast.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600
# Statuses after which nothing changes any more.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
# Statuses a (re)started runner must pick up: the batch is not final and nobody else runs it.
UNFINISHED_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
INPUT_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
# OpenAI's limits on metadata: 16 pairs, keys up to 64 and values up to 512 characters.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# At most this many line errors are listed in a failed batch's `errors` (the rest are counted).
MAX_LISTED_ERRORS = 50


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: `file-...`, `batch_...`, `batch_req_...`."""
    return prefix + secrets.token_hex(12)


def file_object(
    file_id: str, size: int, filename: str, purpose: str, owner: str, created_at: Optional[int] = None
) -> Dict[str, Any]:
    """A File as stored: OpenAI's fields plus `owner` (the API key's name; never the key)."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at if created_at is not None else now(),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
        "owner": owner,
        "created_ns": time.time_ns(),
    }


def batch_object(
    batch_id: str,
    endpoint: str,
    input_file_id: str,
    owner: str,
    allowed_models: Optional[List[str]],
    metadata: Optional[Dict[str, str]],
    window_s: int = COMPLETION_WINDOW_S,
) -> Dict[str, Any]:
    """A new Batch as stored: OpenAI's fields plus `owner` and the models the key could use when the
    batch was created (lines naming another model fail alone). It expires `window_s` after creation
    (OpenAI's completion_window "24h", unless the server's batch.completion_window_s is shorter)."""
    created = now()
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": COMPLETION_WINDOW,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + window_s,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
        "owner": owner,
        "allowed_models": allowed_models,
        "created_ns": time.time_ns(),
    }


# Fields of ours kept in the stored records that clients never see (`created_ns` orders objects
# created within the same second, which OpenAI's created_at cannot).
PRIVATE_FIELDS = ("owner", "allowed_models", "created_ns")


def public(record: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in record.items() if k not in PRIVATE_FIELDS}


def set_status(batch: Dict[str, Any], status: str) -> None:
    """Move a batch to `status` and stamp its `<status>_at` time (OpenAI names them so)."""
    batch["status"] = status
    stamp = f"{status}_at"
    if stamp in batch and batch[stamp] is None:
        batch[stamp] = now()


def output_line(custom_id: str, status_code: int, body: Any, request_id: Optional[str] = None) -> Dict[str, Any]:
    """One line of an output file (status 200) or error file (any other status)."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id or new_id("req_"), "body": body},
        "error": None,
    }


EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def expired_line(custom_id: str) -> Dict[str, Any]:
    """An error-file line for a request the batch did not run before it expired: OpenAI writes these
    with no response and the error code `batch_expired`."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE},
    }


def error_body(message: str, code: str, status_code: int, param: Optional[str] = None) -> Dict[str, Any]:
    """The body of a failed line: the error object the online API would have answered."""
    from llm_serving.gateway.errors import ERROR_TYPE_BY_STATUS

    return {
        "error": {
            "message": message,
            "type": ERROR_TYPE_BY_STATUS.get(status_code, "api_error"),
            "param": param,
            "code": code,
        }
    }


def failed_line(custom_id: str, status_code: int, message: str, code: str, param: Optional[str] = None):
    return output_line(custom_id, status_code, error_body(message, code, status_code, param))


def error_item(code: str, message: str, line: Optional[int] = None, param: Optional[str] = None) -> Dict[str, Any]:
    """One entry of a batch's `errors.data`."""
    return {"code": code, "message": message, "param": param, "line": line}


def errors_list(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return {"object": "list", "data": list(items)}


@dataclass
class InputLine:
    """One request of an input file, as the runner sends it."""

    line: int  # 1-based, as an editor shows it
    custom_id: str
    model: str
    body: Dict[str, Any]


@dataclass
class ParsedInput:
    lines: List[InputLine] = field(default_factory=list)
    # Problems that fail the whole batch before anything runs (`errors.data`).
    errors: List[Dict[str, Any]] = field(default_factory=list)


def parse_input_file(content: bytes, endpoint: str, model_names: Sequence[str], max_lines: int) -> ParsedInput:
    """Check every line of a batch input file the way OpenAI does before a batch starts: JSON
    object, a unique string custom_id, method POST, url equal to the batch's endpoint, a body object
    naming a model this app serves. Any problem fails the batch (the lines named in `errors`); a
    model the key may not use is not checked here (it fails that line only, see the runner)."""
    parsed = ParsedInput()
    seen: Dict[str, int] = {}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        parsed.errors.append(error_item("invalid_file_format", "The input file is not UTF-8 text."))
        return parsed
    numbered = [(n, raw) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not numbered:
        parsed.errors.append(error_item("empty_file", "The input file has no requests."))
        return parsed
    if len(numbered) > max_lines:
        parsed.errors.append(
            error_item(
                "too_many_requests",
                f"The input file has {len(numbered)} requests; this server takes at most {max_lines} per batch.",
            )
        )
        return parsed
    for number, raw in numbered:
        problem = _line_problem(raw, endpoint, model_names, seen, number)
        if isinstance(problem, dict):
            parsed.errors.append(problem)
        else:
            parsed.lines.append(problem)
    return parsed


def _line_problem(raw: str, endpoint: str, model_names: Sequence[str], seen: Dict[str, int], number: int):
    """The line as an InputLine, or the error item that fails the batch."""
    try:
        request = json.loads(raw)
    except ValueError as error:
        return error_item("invalid_json_line", f"Line {number} is not valid JSON: {error}.", number)
    if not isinstance(request, dict):
        return error_item("invalid_json_line", f"Line {number} is not a JSON object.", number)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return error_item("missing_required_parameter", f"Line {number} has no custom_id.", number, "custom_id")
    if custom_id in seen:
        return error_item(
            "duplicate_custom_id",
            f"Line {number} repeats the custom_id {custom_id!r} of line {seen[custom_id]}; each must be unique.",
            number,
            "custom_id",
        )
    seen[custom_id] = number
    if request.get("method") != "POST":
        return error_item("invalid_method", f"Line {number}: method must be POST.", number, "method")
    if request.get("url") != endpoint:
        return error_item(
            "mismatched_endpoint",
            f"Line {number}: url {request.get('url')!r} is not the batch's endpoint {endpoint}.",
            number,
            "url",
        )
    body = request.get("body")
    if not isinstance(body, dict):
        return error_item("invalid_request", f"Line {number}: body must be a JSON object.", number, "body")
    model = body.get("model")
    if model is None and len(model_names) == 1:
        model = model_names[0]
    if not isinstance(model, str) or model not in model_names:
        return error_item(
            "model_not_found",
            f"Line {number}: model {model!r} is not served here; choose one of: {', '.join(model_names)}.",
            number,
            "body.model",
        )
    return InputLine(line=number, custom_id=custom_id, model=model, body={**body, "model": model})


def check_metadata(metadata: Any) -> Optional[str]:
    """What is wrong with a batch's metadata (OpenAI's limits), or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata must be an object of strings."
    if len(metadata) > MAX_METADATA_PAIRS:
        return f"metadata has {len(metadata)} keys; at most {MAX_METADATA_PAIRS} are allowed."
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            return f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY_CHARS} characters."
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            return f"metadata.{key} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters."
    return None


def jsonl(lines: Sequence[Dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
