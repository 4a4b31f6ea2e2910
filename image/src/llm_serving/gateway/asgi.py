"""The small ASGI toolkit the gateway's layers share (the gateway middleware, the traffic policy and
the RAG routes): read a request body, parse it as JSON, hand a (rewritten) body on to the app, and
edit or rewrite a response on its way out.

One implementation of each, so the same problem gets the same OpenAI-style error everywhere.
Pure ASGI on starlette's types: the layers wrap either our ingress app or vLLM's own app.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from starlette.types import Message, Receive, Scope, Send

from llm_serving.gateway.errors import GatewayError

Headers = List[Tuple[bytes, bytes]]

# A request body must arrive whole within this long (a client that sends it slower than its
# Content-Length promises gets 408). HAProxy's `timeout client` cannot bound it: it is an idle
# timeout, and a byte now and then keeps the connection busy.
BODY_READ_TIMEOUT_S = 30.0


def header(scope: Scope, name: bytes) -> Optional[str]:
    """The first value of a request header (`name` in lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def is_json_request(scope: Scope) -> bool:
    """Whether the body is meant as JSON; no Content-Type counts as JSON, as OpenAI's clients assume."""
    content_type = header(scope, b"content-type")
    return content_type is None or content_type.split(";")[0].strip().lower() in ("application/json", "")


def request_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large")


async def read_body(
    scope: Scope, receive: Receive, limit: Optional[int] = None, timeout_s: float = BODY_READ_TIMEOUT_S
) -> bytes:
    """The whole request body. With a `limit`, a larger body is refused (413) by its declared length
    before anything is read, or while reading when it has none, so it is never held in full. A body
    that has not arrived whole within `timeout_s` is refused with 408."""
    if limit is not None:
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise request_too_large(limit)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if limit is not None and size > limit:
                    raise request_too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {timeout_s:g} s ({size} bytes received); "
            "send the whole body at once, at the speed your connection allows.",
            code="request_timeout",
        ) from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The body as JSON (None when empty), or a 400 `invalid_json` naming what is wrong."""
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as error:
        raise GatewayError(400, f"Request body is not valid JSON: {error}", code="invalid_json") from None


def parse_json_object(body: bytes) -> Dict[str, Any]:
    """The body as a JSON object, which every JSON API of ours takes; else a 400 `invalid_json`."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
    return payload


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body on once, then defers to the client's stream (so
    the app still hears a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def with_content_length(scope: Scope, length: int) -> Scope:
    """The scope with its Content-Length set to a rewritten body's length (apps trust the header)."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def with_body(scope: Scope, receive: Receive, body: bytes) -> Tuple[Scope, Receive]:
    """The request as the app should see it with `body` in place of the client's."""
    return with_content_length(scope, len(body)), replay_body(body, receive)


def with_response_headers(send: Send, edit: Callable[[Headers], Headers]) -> Send:
    """Edit the response's headers as its start goes out; the body passes untouched, so streams stay
    streams."""

    async def edited(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": edit(list(message.get("headers", [])))}
        await send(message)

    return edited


def rewrite_response_body(
    send: Send, wanted: Callable[[Message], bool], rewrite: Callable[[Message, bytes], bytes]
) -> Send:
    """Buffer a response whose start `wanted` picks, and send `rewrite(start, whole body)` with the
    start's Content-Length corrected (the start must wait: the length changes). Responses not picked
    pass through as they come, so never pick a stream."""
    start: Optional[Message] = None
    chunks: List[bytes] = []

    async def rewritten(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if wanted(message):
                start = message
            else:
                await send(message)
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = rewrite(start, b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return rewritten
