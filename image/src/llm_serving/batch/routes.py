"""The Batch API's HTTP layer, as ASGI inside the gateway (auth has run: the key is in the scope):
/v1/files and /v1/batches in OpenAI's shapes. A key sees only its own files and batches; anyone
else's are 404, as if they did not exist.

The layer creates batch records and files; running, cancelling and finishing a batch is the
BatchRunner's (runner.py), which it calls through its deployment handle.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_serving.batch.endpoints import BATCHES_PATH, FILES_PATH, match_batch_endpoint
from llm_serving.batch.formats import (
    BATCH_ENDPOINTS,
    COMPLETION_WINDOW,
    INPUT_PURPOSE,
    batch_object,
    check_metadata,
    file_object,
    new_id,
    public,
)
from llm_serving.batch.store import BatchStore, NotFound, owned
from llm_serving.config import BatchConfig
from llm_serving.gateway.asgi import parse_json_object, read_body, request_too_large
from llm_serving.gateway.errors import GatewayError, send_json
from llm_serving.gateway.metrics import ANONYMOUS
from llm_serving.gateway.middleware import API_KEY_SCOPE

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
# Room for the multipart envelope around the largest file accepted.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BatchRoutes:
    def __init__(self, app: ASGIApp, config: BatchConfig, runner: Any):
        self.app = app
        self.config = config
        self.store = BatchStore(config.store_uri)
        self.runner = runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = match_batch_endpoint(scope["path"]) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        endpoint, names = matched
        try:
            operation = endpoint.operation(scope["method"])
            status, body, content_type = await getattr(self, f"_{operation}")(scope, receive, **names)
        except GatewayError as error:
            await error.send(send)
            return
        if content_type == "application/json":
            await send_json(send, status, json.dumps(body).encode())
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # Ownership

    @staticmethod
    def _owner(scope: Scope) -> str:
        api_key = scope.get(API_KEY_SCOPE)
        return api_key.name if api_key is not None else ANONYMOUS

    async def _own_file(self, scope: Scope, file_id: str) -> Dict[str, Any]:
        try:
            record = await asyncio.to_thread(self.store.file, file_id)
        except NotFound:
            record = None
        if not owned(record, self._owner(scope)):
            raise GatewayError(404, f"No such File object: {file_id}", code="not_found", param="id")
        assert record is not None
        return record

    async def _own_batch(self, scope: Scope, batch_id: str) -> Dict[str, Any]:
        try:
            record = await asyncio.to_thread(self.store.batch, batch_id)
        except NotFound:
            record = None
        if not owned(record, self._owner(scope)):
            raise GatewayError(404, f"No such Batch object: {batch_id}", code="not_found", param="id")
        assert record is not None
        return record

    # /v1/files

    async def _upload_file(self, scope: Scope, receive: Receive) -> Tuple[int, Any, str]:
        limit = self.config.max_file_bytes
        body = await read_body(scope, receive, limit + MULTIPART_OVERHEAD_BYTES)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, replay).form(max_part_size=limit + 1)
        except Exception as error:  # starlette's MultiPartException, a bad boundary, ...
            raise GatewayError(400, f"Send the file as multipart/form-data: {error}", code="invalid_request") from None
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose != INPUT_PURPOSE:
            raise GatewayError(
                400,
                f"purpose must be {INPUT_PURPOSE!r} (the only one this server takes).",
                param="purpose",
                code="invalid_value",
            )
        if not isinstance(upload, UploadFile):
            raise GatewayError(400, "Missing the file part `file`.", code="missing_required_parameter", param="file")
        content = await upload.read()
        if len(content) > limit:
            raise request_too_large(limit)
        if not content.strip():
            raise GatewayError(400, "The file is empty.", code="invalid_file", param="file")
        lines = sum(1 for raw in content.splitlines() if raw.strip())
        if lines > self.config.max_lines:
            raise GatewayError(
                400,
                f"The file has {lines} lines; a batch input file may have at most {self.config.max_lines}.",
                code="too_many_lines",
                param="file",
            )
        record = file_object(
            new_id("file-"), len(content), upload.filename or "input.jsonl", purpose, self._owner(scope)
        )
        await asyncio.to_thread(self.store.put_file, record, content)
        return 200, public(record), "application/json"

    async def _list_files(self, scope: Scope, receive: Receive) -> Tuple[int, Any, str]:
        query = _query(scope)
        owner = self._owner(scope)
        purpose = query.get("purpose")
        records = await asyncio.to_thread(
            lambda: [f for f in self.store.files() if f["owner"] == owner and purpose in (None, f["purpose"])]
        )
        return 200, _page(records, query), "application/json"

    async def _get_file(self, scope: Scope, receive: Receive, file_id: str) -> Tuple[int, Any, str]:
        return 200, public(await self._own_file(scope, file_id)), "application/json"

    async def _file_content(self, scope: Scope, receive: Receive, file_id: str) -> Tuple[int, Any, str]:
        await self._own_file(scope, file_id)
        try:
            content = await asyncio.to_thread(self.store.file_content, file_id)
        except NotFound:
            raise GatewayError(404, f"No such File object: {file_id}", code="not_found", param="id") from None
        return 200, content, "application/octet-stream"

    async def _delete_file(self, scope: Scope, receive: Receive, file_id: str) -> Tuple[int, Any, str]:
        await self._own_file(scope, file_id)
        await asyncio.to_thread(self.store.delete_file, file_id)
        return 200, {"id": file_id, "object": "file", "deleted": True}, "application/json"

    # /v1/batches

    async def _create_batch(self, scope: Scope, receive: Receive) -> Tuple[int, Any, str]:
        payload = parse_json_object(await read_body(scope, receive))
        endpoint = payload.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            raise GatewayError(
                400, f"endpoint must be one of: {', '.join(BATCH_ENDPOINTS)}.", code="invalid_value", param="endpoint"
            )
        if payload.get("completion_window") != COMPLETION_WINDOW:
            raise GatewayError(
                400,
                f"completion_window must be {COMPLETION_WINDOW!r}.",
                code="invalid_value",
                param="completion_window",
            )
        problem = check_metadata(payload.get("metadata"))
        if problem is not None:
            raise GatewayError(400, problem, code="invalid_value", param="metadata")
        input_file_id = payload.get("input_file_id")
        if not isinstance(input_file_id, str):
            raise GatewayError(
                400, "input_file_id is required.", code="missing_required_parameter", param="input_file_id"
            )
        input_file = await self._own_file(scope, input_file_id)
        if input_file["purpose"] != INPUT_PURPOSE:
            raise GatewayError(
                400,
                f"File {input_file_id} has purpose {input_file['purpose']!r}, not 'batch'.",
                code="invalid_value",
                param="input_file_id",
            )
        api_key = scope.get(API_KEY_SCOPE)
        allowed = sorted(api_key.allowed_models) if api_key is not None and api_key.allowed_models is not None else None
        batch = batch_object(
            new_id("batch_"),
            endpoint,
            input_file_id,
            self._owner(scope),
            allowed,
            payload.get("metadata"),
            window_s=self.config.completion_window_s,
        )
        await asyncio.to_thread(self.store.put_batch, batch)
        # Recorded first: should the runner be unreachable now, it picks the batch up when it starts.
        await self.runner.submit.remote(batch["id"])
        return 200, public(batch), "application/json"

    async def _list_batches(self, scope: Scope, receive: Receive) -> Tuple[int, Any, str]:
        owner = self._owner(scope)
        records = await asyncio.to_thread(lambda: [b for b in self.store.batches() if b["owner"] == owner])
        return 200, _page(records, _query(scope)), "application/json"

    async def _get_batch(self, scope: Scope, receive: Receive, batch_id: str) -> Tuple[int, Any, str]:
        return 200, public(await self._own_batch(scope, batch_id)), "application/json"

    async def _cancel_batch(self, scope: Scope, receive: Receive, batch_id: str) -> Tuple[int, Any, str]:
        batch = await self._own_batch(scope, batch_id)
        if batch["status"] in ("completed", "failed", "expired"):
            raise GatewayError(
                409,
                f"Batch {batch_id} is {batch['status']}; only a running batch can be cancelled.",
                code="invalid_state",
            )
        return 200, public(await self.runner.cancel.remote(batch_id)), "application/json"


def _query(scope: Scope) -> Dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode())
    return {key: values[-1] for key, values in parsed.items()}


def _page(records: List[Dict[str, Any]], query: Dict[str, str]) -> Dict[str, Any]:
    """OpenAI's cursor pagination: newest first, `after` an id, `limit` 1..100."""
    records = sorted(records, key=lambda r: (r["created_at"], r.get("created_ns", 0), r["id"]), reverse=True)
    after: Optional[str] = query.get("after")
    if after is not None:
        ids = [r["id"] for r in records]
        records = records[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = int(query.get("limit", DEFAULT_LIST_LIMIT))
    except ValueError:
        raise GatewayError(400, "limit must be an integer.", code="invalid_value", param="limit") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise GatewayError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}.", code="invalid_value", param="limit")
    page = [public(r) for r in records[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(records) > limit,
    }


def batch_layer(app: ASGIApp, batch: Dict[str, Any], runner: Any) -> ASGIApp:
    """Wrap the ingress app in the Batch API routes. `batch` is the BatchConfig dump build_app binds."""
    return BatchRoutes(app, BatchConfig.model_validate(batch), runner)


__all__ = ["BatchRoutes", "batch_layer", "FILES_PATH", "BATCHES_PATH"]
