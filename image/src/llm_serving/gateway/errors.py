"""OpenAI-shaped error responses: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Iterable, Optional, Tuple

from starlette.types import Send

# The `type` OpenAI's API returns for each status we produce.
ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


# Codes for the app's own exceptions that Ray Serve LLM's exception handler answers: it puts the
# HTTP status in `code` and the exception's class name in `type`
# (ray/llm/_internal/serve/utils/server_utils.py, get_response_for_error). Keyed by that name.
CODE_BY_EXCEPTION_TYPE = {
    "AdapterUnavailable": "adapter_unavailable",  # llm_serving.lora
    "EngineUnavailable": "engine_unavailable",  # llm_serving.gateway.stream_failures
}


def error_body(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": ERROR_TYPE_BY_STATUS.get(status, "api_error"),
                "param": param,
                "code": code,
            }
        }
    ).encode()


def openai_error_from_body(status: int, body: bytes) -> bytes:
    """Rewrite an inner app's JSON error (vLLM's, Ray Serve LLM's or FastAPI's `detail`) into
    OpenAI's shape, keeping the message and dropping internal exception names."""
    try:
        payload = json.loads(body)
    except ValueError:
        return error_body(status, body.decode("utf-8", "replace") or f"HTTP {status}")
    inner = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(inner, dict):
        message = str(inner.get("message", ""))
        param = inner.get("param") if isinstance(inner.get("param"), str) else None
        code = inner.get("code") if isinstance(inner.get("code"), str) else None
        code = code or CODE_BY_EXCEPTION_TYPE.get(str(inner.get("type")))
    elif isinstance(payload, dict) and "detail" in payload:
        message, param, code = str(payload["detail"]), None, None
    else:
        message, param, code = json.dumps(payload), None, None
    return error_body(status, _clean_message(message), code=code, param=param)


def _clean_message(message: str) -> str:
    # Ray Serve LLM wraps vLLM's message as "Message: <text> (Request ID: ...), Internal exception: ...".
    message = message.removeprefix("Message: ")
    cut = message.find(" (Request ID:")
    return message[:cut] if cut >= 0 else message


async def send_json(send: Send, status: int, body: bytes, headers: Iterable[Tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GatewayError(Exception):
    """A request the gateway refuses; becomes an OpenAI error response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: Optional[str] = None,
        param: Optional[str] = None,
        headers: Iterable[Tuple[bytes, bytes]] = (),
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = list(headers)

    async def send(self, send: Send) -> None:
        await send_json(send, self.status, error_body(self.status, self.message, self.code, self.param), self.headers)
