"""The gateway as plain ASGI middleware, so the same code wraps either ingress.

- Multi-model: it wraps the FastAPI app of our OpenAiIngress subclass (one hop to the engines).
- One model with direct streaming: it wraps vLLM's own app inside the engine replica, so auth and
  errors cost no extra hop and the fast path stays fast.

Order of checks: health endpoints (no auth), size limit (413), auth (401), JSON body and `model`
(400), unknown model (404), key not allowed for the model (403), model not ready (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable, Dict, List, Optional, Set, Tuple

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKey, ApiKeyStore, bearer_token
from llm_serving.gateway.errors import GatewayError, openai_error_from_body, send_json
from llm_serving.gateway.metrics import ANONYMOUS, Exchange, route_label
from llm_serving.gateway.traffic import (
    TrafficControl,
    admit,
    alias_card,
    resolve_alias,
    settle,
    shadow_body,
    shadow_target,
    with_aliases_listed,
    with_variant_header,
)

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
# Paths any caller may reach: our probes and vLLM's own health check.
UNAUTHENTICATED_PATHS = {LIVENESS_PATH, READINESS_PATH, "/health"}
# The RAG API (llm_serving.rag) names collections, not models: auth and limits apply, the model
# checks do not (the RAG layer checks the key against each collection's embedding model).
RAG_PATH_PREFIX = "/v1/rag/"
MODEL_PATH_PREFIX = "/v1/models/"
# Where the authenticated ApiKey is left in the ASGI scope for the layers inside the gateway.
API_KEY_SCOPE = "llm_serving.api_key"
RETRY_AFTER_NOT_READY_S = 5
# Shadow copies in flight per gateway replica; more are dropped rather than queued.
MAX_SHADOWS_IN_FLIGHT = 32

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Dict[str, bool]]
Recorder = Callable[[Exchange], None]


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        model_names: List[str],
        max_request_bytes: int,
        key_store: Optional[ApiKeyStore],
        readiness: Optional[ReadinessCheck] = None,
        record: Optional[Recorder] = None,
        traffic: Optional[TrafficControl] = None,
    ):
        self.app = app
        self.model_names = sorted(model_names)
        self.max_request_bytes = max_request_bytes
        self.key_store = key_store
        # None means "ready whenever this code runs" (direct streaming: the replica serves only once
        # its engine is up).
        self.readiness = readiness
        self.record = record
        # Aliases, sticky variants and per-key limits; swapped whole on reconfigure.
        self.traffic = traffic
        self._shadows_in_flight: Set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == LIVENESS_PATH:
            await send_json(send, 200, b'{"status":"ok"}')
            return
        if path == READINESS_PATH:
            await self._send_readiness(send)
            return
        exchange = Exchange(route=route_label(path))
        traffic = self.traffic.state if self.traffic is not None else None
        admission = None
        alias_answer: Optional[bytes] = None
        mirror: Optional[Tuple[str, str, bytes]] = None  # (alias, shadow model, body) of a shadow copy
        try:
            api_key = self._authenticate(scope) if path not in UNAUTHENTICATED_PATHS else None
            exchange.api_key = api_key.name if api_key else ANONYMOUS
            scope[API_KEY_SCOPE] = api_key
            if path.startswith(RAG_PATH_PREFIX):
                payload = {}
                if scope["method"] == "POST" and _is_json(scope):
                    body = await self._read_body(scope, receive)
                    payload = self._parse(body)  # size limit and JSON errors as for every other route
                    receive = replay_body(body, receive)
                if traffic is not None:  # the key's requests and concurrency limits (RAG reports no tokens)
                    admission = await admit(traffic, exchange.api_key, payload)
            elif scope["method"] == "POST" and _is_json(scope):
                body = await self._read_body(scope, receive)
                payload = self._parse(body)
                alias = payload.get("model")
                variant = self._resolve_alias(traffic, payload, scope, api_key) if traffic else None
                exchange.variant = self._check_model(payload, api_key, via_alias=variant is not None)
                exchange.model = alias if variant is not None else exchange.variant
                if variant is not None:
                    body = json.dumps(payload).encode()  # `model` rewritten to the variant
                    scope = with_content_length(scope, len(body))
                    send = with_variant_header(send, variant)
                    mirror_to = shadow_target(traffic, alias, variant)
                    if mirror_to is not None:
                        mirror = (alias, mirror_to, shadow_body(payload, mirror_to))
                forwarded = exchange.request_usage_in_stream(payload, body)
                if forwarded is not body:
                    scope = with_content_length(scope, len(forwarded))
                receive = replay_body(forwarded, receive)
                if traffic is not None:
                    admission = await admit(traffic, exchange.api_key, payload)
            elif traffic is not None and traffic.aliases and path == "/v1/models" and scope["method"] == "GET":
                send = with_aliases_listed(send, traffic.aliases.names)
            elif (traffic is not None and scope["method"] == "GET" and path.startswith(MODEL_PATH_PREFIX)
                  and path[len(MODEL_PATH_PREFIX):] in traffic.aliases):
                # The gateway's own answer: the engines do not know the alias.
                exchange.model = path[len(MODEL_PATH_PREFIX):]
                alias_answer = json.dumps(alias_card(exchange.model)).encode()
        except GatewayError as error:
            exchange.status = error.status
            await error.send(send)
            self._record(exchange)
            return
        if alias_answer is not None:
            exchange.status = 200
            await send_json(send, 200, alias_answer)
            self._record(exchange)
            return
        if mirror is not None:  # admitted: the copy goes out beside the request
            self._mirror(scope, *mirror)
        try:
            await self.app(scope, receive, exchange.observe(_normalized_responses(send)))
        finally:
            if admission is not None:
                await settle(traffic, admission, exchange.prompt_tokens, exchange.generated_tokens)
            self._record(exchange)

    def _mirror(self, scope: Scope, alias: str, variant: str, body: bytes) -> None:
        """Send a shadow copy of an alias request to `variant` in the background; its answer is
        dropped. Copies never queue up behind real traffic: beyond MAX_SHADOWS_IN_FLIGHT per
        gateway replica they are dropped (counted with status_code "dropped")."""
        exchange = Exchange(route=route_label(scope["path"]), model=alias, variant=variant, shadow=True)
        if len(self._shadows_in_flight) >= MAX_SHADOWS_IN_FLIGHT:
            self._record(exchange)
            return
        task = asyncio.get_running_loop().create_task(self._send_shadow(scope, body, exchange))
        self._shadows_in_flight.add(task)  # a reference until done, so the task is not collected
        task.add_done_callback(self._shadows_in_flight.discard)

    async def _send_shadow(self, scope: Scope, body: bytes, exchange: Exchange) -> None:
        async def still_connected() -> Message:  # no client to disconnect: the app never hears one
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            pass

        try:
            await self.app(with_content_length(scope, len(body)), replay_body(body, still_connected),
                           exchange.observe(discard))
        except Exception:
            logger.warning("shadow copy to %s failed", exchange.variant, exc_info=True)
            exchange.status = exchange.status or 500
        self._record(exchange)

    def _resolve_alias(self, traffic, payload: Dict, scope: Scope, api_key: Optional[ApiKey]) -> Optional[str]:
        """The variant for a request that names an alias (the key must be allowed the alias)."""
        alias = payload.get("model")
        if not isinstance(alias, str) or alias not in traffic.aliases:
            return None
        if api_key is not None and not api_key.may_use(alias):
            raise GatewayError(
                403,
                f"This API key ({api_key.name}) may not use model `{alias}`. "
                f"Allowed models: {self._visible(api_key)}.",
                code="model_not_allowed",
                param="model",
            )
        return resolve_alias(traffic, payload, lambda name: _header(scope, name.encode()),
                             api_key.name if api_key else None)

    def _record(self, exchange: Exchange) -> None:
        if self.record is not None:
            self.record(exchange)

    async def _send_readiness(self, send: Send) -> None:
        states = self.readiness() if self.readiness else {name: True for name in self.model_names}
        not_ready = sorted(name for name, ready in states.items() if not ready)
        status = {"ready": not not_ready, "models": states}
        if self.traffic is not None:
            status["traffic"] = self.traffic.status()
        body = json.dumps(status).encode()
        headers = [(b"retry-after", str(RETRY_AFTER_NOT_READY_S).encode())] if not_ready else []
        await send_json(send, 503 if not_ready else 200, body, headers)

    def _authenticate(self, scope: Scope) -> Optional[ApiKey]:
        if self.key_store is None:
            return None
        token = bearer_token(_header(scope, b"authorization"))
        if token is None:
            raise GatewayError(
                401,
                "Missing API key. Send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
                headers=[(b"www-authenticate", b"Bearer")],
            )
        api_key = self.key_store.authenticate(token)
        if api_key is None:
            raise GatewayError(
                401, "Incorrect API key provided.", code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")]
            )
        return api_key

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise _too_large(self.max_request_bytes)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                raise _too_large(self.max_request_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _parse(body: bytes) -> Dict:
        try:
            payload = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError) as error:
            raise GatewayError(400, f"Request body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
        return payload

    def _check_model(self, payload: Dict, api_key: Optional[ApiKey], via_alias: bool = False) -> str:
        """The model the request is for, once it exists, the key may use it and it is ready."""
        model = payload.get("model")
        if model is None:
            if len(self.model_names) > 1:
                raise GatewayError(
                    400,
                    f"`model` is required when several models are served; choose one of: {self._visible(api_key)}.",
                    code="missing_model",
                    param="model",
                )
            model = self.model_names[0]
        if not isinstance(model, str):
            raise GatewayError(400, "`model` must be a string.", code="invalid_type", param="model")
        if model not in self.model_names:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist. Available models: {self._visible(api_key)}.",
                code="model_not_found",
                param="model",
            )
        if api_key is not None and not via_alias and not api_key.may_use(model):
            raise GatewayError(
                403,
                f"This API key ({api_key.name}) may not use model `{model}`. "
                f"Allowed models: {self._visible(api_key)}.",
                code="model_not_allowed",
                param="model",
            )
        if self.readiness is not None and not self.readiness().get(model, False):
            raise GatewayError(
                503,
                f"The model `{model}` is starting and not ready yet; retry after {RETRY_AFTER_NOT_READY_S} s.",
                code="model_not_ready",
                headers=[(b"retry-after", str(RETRY_AFTER_NOT_READY_S).encode())],
            )
        return model

    def _visible(self, api_key: Optional[ApiKey]) -> str:
        names = [n for n in self.model_names if api_key is None or api_key.may_use(n)]
        return ", ".join(names) if names else "(none for this key)"


def with_cors(app: ASGIApp, allow_origins: List[str]) -> ASGIApp:
    """Our CORS policy, outermost. With no origins it still answers (and refuses) preflights, so
    the permissive CORS that vLLM and Ray Serve LLM install inside never takes effect."""
    return CORSMiddleware(
        app,
        allow_origins=allow_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type", "x-request-id", "x-session-id"],
        max_age=600,
    )


def key_store_for(config: GatewayConfig) -> Optional[ApiKeyStore]:
    """The configured keys, or None when auth is off. Raises KeysFileError naming the bad source."""
    return ApiKeyStore.from_config(config.auth.api_keys) if config.auth.mode == "api_key" else None


def build_gateway(
    app: ASGIApp,
    config: GatewayConfig,
    model_names: List[str],
    key_store: Optional[ApiKeyStore],
    readiness: Optional[ReadinessCheck] = None,
    record: Optional[Recorder] = None,
    traffic: Optional[TrafficControl] = None,
) -> ASGIApp:
    gateway = GatewayMiddleware(
        app,
        model_names=model_names,
        max_request_bytes=config.max_request_bytes,
        key_store=key_store,
        readiness=readiness,
        record=record,
        traffic=traffic,
    )
    return with_cors(gateway, config.cors_allow_origins)


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_json(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type")
    return content_type is None or content_type.split(";")[0].strip().lower() in ("application/json", "")


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )


def with_content_length(scope: Scope, length: int) -> Scope:
    """The scope with its Content-Length set to a rewritten body's length."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body on once, then defers to the client's stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _normalized_responses(send: Send) -> Callable[[Message], Awaitable[None]]:
    """Pass responses on, dropping the inner apps' CORS headers (our policy is the outer one) and
    rewriting their JSON error bodies into OpenAI's shape."""
    error_status = 0
    buffered: List[bytes] = []

    async def normalized(message: Message) -> None:
        nonlocal error_status
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
            if message["status"] >= 400 and (b"content-type", b"application/json") in headers:
                # Hold the start until the body is rewritten: its length changes.
                error_status = message["status"]
                return
            await send({**message, "headers": headers})
            return
        if error_status and message["type"] == "http.response.body":
            buffered.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await send_json(send, error_status, openai_error_from_body(error_status, b"".join(buffered)))
            return
        await send(message)

    return normalized
