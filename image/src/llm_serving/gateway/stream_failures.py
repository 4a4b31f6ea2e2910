"""What a client sees when the engine behind the gateway fails (issue 14, fault case 1).

Ray Serve LLM's ingress streams the engine's chunks as server-sent events. When the engine replica
dies mid-stream, the handle's generator raises inside Starlette's StreamingResponse, after the 200
and its headers went out: the response was simply cut (no error, no `[DONE]`), and a request that
reached the dying replica before its first chunk answered 500 "Internal Server Error".

This layer sits between the gateway and Ray Serve LLM's ingress app:
- an exception once an event stream has started ends that stream with an OpenAI-shaped error event
  (`data: {"error": {...}}`, then `data: [DONE]`), which the openai client raises as an APIError;
- a 503 the inner app answers (an engine that is gone or not there yet, see ingress.py) carries
  `Retry-After`, like the gateway's own 503s.
"""

from __future__ import annotations

import logging
from typing import Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serving.gateway.errors import error_body

RETRY_AFTER_ENGINE_S = 5
logger = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """The engine replica a request went to is gone (its actor died, or is restarting). Ray Serve
    LLM's exception handler answers with `status_code` (503) when it is raised before the stream
    starts; mid-stream, StreamFailureLayer turns it into an error event."""

    status_code = 503

    def __init__(self, model: Optional[str]):
        self.message = (
            f"The engine serving model `{model}` failed while handling this request and is being restarted; "
            f"retry after {RETRY_AFTER_ENGINE_S} s."
        )
        super().__init__(self.message)


def stream_error_event(error: BaseException) -> bytes:
    """The SSE error event for a stream that failed after it started: OpenAI's error shape."""
    if isinstance(error, EngineUnavailable):
        body = error_body(503, error.message, code="engine_unavailable")
    else:
        body = error_body(
            500,
            f"The response stream failed on the server ({type(error).__name__}); retry the request.",
            code="stream_failed",
        )
    return b"data: " + body + b"\n\ndata: [DONE]\n\n"


class StreamFailureLayer:
    """See the module docstring. Starlette's BaseHTTPMiddleware (inside Ray Serve LLM's app) closes
    the response body (an empty `more_body: False`) before it re-raises the app's exception, so the
    closing message of an event stream is held back until the inner app has returned: on a normal
    return it goes out as it came, on an exception the error event closes the stream instead."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"event_stream": False, "ended": False}
        held: list = []  # the event stream's closing message, until the app returns

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                state["event_stream"] = content_type.startswith(b"text/event-stream")
                if message["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", str(RETRY_AFTER_ENGINE_S).encode()))
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                if state["event_stream"] and not message.get("body"):
                    held.append(message)
                    return
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if not state["event_stream"] or state["ended"]:
                raise
            logger.warning("stream to %s failed mid-response: %r", scope.get("path"), error)
            await send({"type": "http.response.body", "body": stream_error_event(error), "more_body": False})
            return
        for message in held:
            await send(message)
