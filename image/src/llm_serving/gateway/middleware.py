"""The gateway as plain ASGI middleware, so the same code wraps either ingress.

- Multi-model: it wraps the FastAPI app of our OpenAiIngress subclass (one hop to the engines).
- One model with direct streaming: it wraps vLLM's own app inside the engine replica, so auth and
  errors cost no extra hop and the fast path stays fast.

Order of checks: health endpoints (no auth), auth (401), then the route's handler: size limit (413),
JSON body and `model` (400), unknown model (404), key not allowed for the model (403), model not
ready (503), unknown LoRA adapter of `<model>:<adapter>` (404), the body's shape (400, see
request_shapes.py), the key's limits (429). Handlers only
prepare a request (or answer it themselves); forwarding, settling the limits and recording are
common to all, and responses stream through.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Dict, List, Optional, Set, Tuple

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serving import _ray
from llm_serving.batch.endpoints import is_batch_path
from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKey, ApiKeyStore, bearer_token
from llm_serving.gateway.asgi import (
    Headers,
    header,
    is_json_request,
    parse_json_object,
    read_body,
    replay_body,
    rewrite_response_body,
    with_body,
    with_response_headers,
)
from llm_serving.gateway.errors import GatewayError, openai_error_from_body, send_json
from llm_serving.gateway.limits import Admission
from llm_serving.gateway.metrics import ANONYMOUS, NO_ADAPTER, Exchange, route_label
from llm_serving.gateway.request_shapes import check_request_shape
from llm_serving.gateway.traffic import (
    TrafficControl,
    TrafficState,
    admit,
    alias_card,
    resolve_alias,
    settle,
    shadow_body,
    shadow_target,
    with_aliases_listed,
    with_variant_header,
)
from llm_serving.lora import AdapterCatalog, split_adapter
from llm_serving.rag.endpoints import RAG_PATH_PREFIX

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
# Paths any caller may reach: our probes and vLLM's own health check.
UNAUTHENTICATED_PATHS = {LIVENESS_PATH, READINESS_PATH, "/health"}
MODELS_PATH = "/v1/models"
MODEL_PATH_PREFIX = "/v1/models/"
# Where the authenticated ApiKey is left in the ASGI scope for the layers inside the gateway.
API_KEY_SCOPE = "llm_serving.api_key"
# ... and the model an inference request goes to (an alias resolved to its variant).
MODEL_SCOPE = "llm_serving.model"
RETRY_AFTER_NOT_READY_S = 5
# Retry-After of an engine's back-pressure refusal (its max_queued_requests reached): short, since
# a queue slot frees as soon as one request finishes.
RETRY_AFTER_OVERLOADED_S = 1
# Shadow copies in flight per gateway replica; more are dropped rather than queued.
MAX_SHADOWS_IN_FLIGHT = 32

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Dict[str, bool]]
Recorder = Callable[[Exchange], None]


@dataclass
class _Request:
    """One request on its way through the gateway. Its route's handler checks it and may rewrite what
    the app gets (scope, body, send) and count it against the key's limits."""

    scope: Scope
    receive: Receive
    send: Send
    exchange: Exchange
    traffic: Optional[TrafficState]
    api_key: Optional[ApiKey]
    admission: Optional[Admission] = None
    mirror: Optional[Tuple[str, str, bytes]] = None  # (alias, shadow model, body) of a shadow copy


# A route handler: raises GatewayError to refuse the request; returns a body when the gateway
# answers itself, None when the (prepared) request goes on to the app.
RouteHandler = Callable[[_Request], Awaitable[Optional[bytes]]]


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
        adapters: Optional[AdapterCatalog] = None,
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
        # LoRA models' adapters (`model: <model>:<adapter>`); None: no model has lora.
        self.adapters = adapters
        self._shadows_in_flight: Set[asyncio.Task] = set()
        # Probes answer before auth and are not counted.
        self._probes = {LIVENESS_PATH: self._send_liveness, READINESS_PATH: self._send_readiness}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = self._probes.get(scope["path"])
        if probe is not None:
            await probe(send)
            return
        exchange = Exchange(route=route_label(scope["path"]))
        traffic = self.traffic.state if self.traffic is not None else None
        request = _Request(scope, receive, send, exchange, traffic, api_key=None)
        try:
            request.api_key = self._authenticate(scope) if scope["path"] not in UNAUTHENTICATED_PATHS else None
            exchange.api_key = request.api_key.name if request.api_key else ANONYMOUS
            scope[API_KEY_SCOPE] = request.api_key
            handler = self._route(scope, traffic)
            answer = await handler(request) if handler is not None else None
        except GatewayError as error:
            exchange.status = error.status
            await error.send(request.send)  # with the variant header when the alias was resolved
            self._record(exchange)
            return
        if answer is not None:
            exchange.status = 200
            await send_json(request.send, 200, answer)
            self._record(exchange)
            return
        await self._forward(request)

    def _route(self, scope: Scope, traffic: Optional[TrafficState]) -> Optional[RouteHandler]:
        """The handler for a request; None: the app gets it as it came (after auth)."""
        method, path = scope["method"], scope["path"]
        if path.startswith(RAG_PATH_PREFIX) or is_batch_path(path):
            return self._handle_object_api
        if method == "POST" and is_json_request(scope):
            return self._handle_inference
        if method == "GET" and traffic is not None and traffic.aliases:
            if path == MODELS_PATH:
                return self._handle_model_list
            if path.startswith(MODEL_PATH_PREFIX) and path[len(MODEL_PATH_PREFIX) :] in traffic.aliases:
                return self._handle_alias_card
        return None

    async def _handle_object_api(self, request: _Request) -> None:
        """The RAG and Batch APIs name collections, files and batches, not models: auth and limits
        apply, the model checks do not (the RAG layer checks the key against each collection's
        embedding model; the Batch runner each line's model). A file upload (multipart) is not read
        here: the Batch layer applies its own, larger, size limit."""
        payload = {}
        if request.scope["method"] == "POST" and is_json_request(request.scope):
            body = await read_body(request.scope, request.receive, self.max_request_bytes)
            # Size limit and JSON errors as for every other route; an empty body is no payload
            # (POST /v1/batches/{id}/cancel has none, and the openai client sends none).
            payload = parse_json_object(body) if body else {}
            request.receive = replay_body(body, request.receive)
        await self._admit(request, payload)  # no tokens reported here: the requests and concurrency limits

    async def _handle_inference(self, request: _Request) -> None:
        """A POST naming a model (or an alias): the body is checked, `model` resolved, and the body the
        engine gets rewritten where needed (the variant; a usage chunk for streams)."""
        exchange, traffic = request.exchange, request.traffic
        body = await read_body(request.scope, request.receive, self.max_request_bytes)
        payload = parse_json_object(body)
        requested = payload.get("model")  # resolving an alias rewrites it to the variant
        variant = self._resolve_alias(traffic, payload, request.scope, request.api_key) if traffic else None
        exchange.variant = self._check_model(payload, request.api_key, via_alias=variant is not None)
        exchange.model = exchange.variant
        exchange.adapter = await self._check_adapter(payload, exchange.model, request.api_key)
        check_request_shape(request.scope["path"], payload)  # 400 naming the field, never the engine's 500
        forwarded = body
        if variant is not None and traffic is not None:
            exchange.model = alias = str(requested)  # an alias: always a string
            forwarded = json.dumps(payload).encode()  # `model` rewritten to the variant
            request.send = with_variant_header(request.send, variant)
            mirror_to = shadow_target(traffic, alias, variant)
            if mirror_to is not None:
                request.mirror = (alias, mirror_to, shadow_body(payload, mirror_to))
        forwarded = exchange.request_usage_in_stream(payload, forwarded)
        if forwarded is body:
            request.receive = replay_body(body, request.receive)
        else:
            request.scope, request.receive = with_body(request.scope, request.receive, forwarded)
        request.scope[MODEL_SCOPE] = exchange.variant
        await self._admit(request, payload)

    async def _handle_model_list(self, request: _Request) -> None:
        if request.traffic is not None:
            request.send = with_aliases_listed(request.send, request.traffic.aliases.names)

    async def _handle_alias_card(self, request: _Request) -> bytes:
        """The gateway's own answer: the engines do not know the alias."""
        request.exchange.model = request.scope["path"][len(MODEL_PATH_PREFIX) :]
        return json.dumps(alias_card(request.exchange.model)).encode()

    async def _admit(self, request: _Request, payload: Dict) -> None:
        """Count the request against its key's limits (429 when over them); settled in _forward."""
        if request.traffic is not None:
            request.admission = await admit(request.traffic, request.exchange.api_key, payload)
            request.exchange.limits_uncounted = request.admission is not None and request.admission.uncounted

    async def _forward(self, request: _Request) -> None:
        """Hand the admitted request to the app, streaming its response through, then settle the
        key's limits with the tokens used and record the exchange."""
        exchange = request.exchange
        if request.mirror is not None:  # admitted: the copy goes out beside the request
            self._mirror(request.scope, *request.mirror)
        try:
            await self.app(request.scope, request.receive, exchange.observe(_normalized_responses(request.send)))
        finally:
            if request.admission is not None and request.traffic is not None:
                await settle(request.traffic, request.admission, exchange.prompt_tokens, exchange.generated_tokens)
            self._record(exchange)

    def _mirror(self, scope: Scope, alias: str, variant: str, body: bytes) -> None:
        """Send a shadow copy of an alias request to `variant` in the background; its answer is
        dropped. Copies never queue up behind real traffic: beyond MAX_SHADOWS_IN_FLIGHT per
        gateway replica they are dropped (counted with status_code "dropped")."""
        exchange = Exchange(route=route_label(scope["path"]), model=alias, variant=variant, shadow=True)
        if len(self._shadows_in_flight) >= MAX_SHADOWS_IN_FLIGHT:
            self._record(exchange)
            return
        # Outside the client's request: Serve would cancel the copy's engine call with it.
        task = asyncio.get_running_loop().create_task(
            self._send_shadow({**scope, MODEL_SCOPE: variant}, body, exchange), context=_ray.outside_the_request()
        )
        self._shadows_in_flight.add(task)  # a reference until done, so the task is not collected
        task.add_done_callback(self._shadows_in_flight.discard)

    async def _send_shadow(self, scope: Scope, body: bytes, exchange: Exchange) -> None:
        async def still_connected() -> Message:  # no client to disconnect: the app never hears one
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            pass

        try:
            await self.app(*with_body(scope, still_connected, body), exchange.observe(discard))
        except asyncio.CancelledError:  # the replica is stopping: counted as dropped, never lost
            exchange.status = 0
            self._record(exchange)
            raise
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
                f"This API key ({api_key.name}) may not use model `{alias}`. Allowed models: {self._visible(api_key)}.",
                code="model_not_allowed",
                param="model",
            )
        return resolve_alias(
            traffic, payload, lambda name: header(scope, name.encode()), api_key.name if api_key else None
        )

    def _record(self, exchange: Exchange) -> None:
        if self.record is not None:
            self.record(exchange)

    async def _send_liveness(self, send: Send) -> None:
        await send_json(send, 200, b'{"status":"ok"}')

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
        token = bearer_token(header(scope, b"authorization"))
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
        requested = model
        base, adapter = split_adapter(model)
        if adapter is not None and self.adapters is not None and self.adapters.has_adapters(base):
            model = base  # `<model>:<adapter>`: the base must exist, be allowed and be ready
        else:
            adapter = None
        if model not in self.model_names:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist. Available models: {self._visible(api_key)}.",
                code="model_not_found",
                param="model",
            )
        if api_key is not None and not via_alias and not self._key_allows(api_key, model, adapter):
            raise GatewayError(
                403,
                f"This API key ({api_key.name}) may not use model `{requested}`. "
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

    @staticmethod
    def _key_allows(api_key: ApiKey, model: str, adapter: Optional[str]) -> bool:
        return api_key.may_use_adapter(model, adapter) if adapter is not None else api_key.may_use(model)

    async def _check_adapter(self, payload: Dict, base: str, api_key: Optional[ApiKey]) -> str:
        """The adapter a `<model>:<adapter>` request names, once it exists (404 naming those that do);
        NO_ADAPTER for a request to a model itself. Runs after _check_model (the base is known, allowed, ready)."""
        requested = payload.get("model")
        adapter = split_adapter(requested)[1] if isinstance(requested, str) else None
        if adapter is None or self.adapters is None or not self.adapters.has_adapters(base):
            return NO_ADAPTER
        existing = await self.adapters.adapters(base)
        if adapter not in existing:
            visible = [a for a in existing if api_key is None or api_key.may_use_adapter(base, a)]
            raise GatewayError(
                404,
                f"The adapter `{adapter}` of model `{base}` does not exist. Available adapters: "
                + (", ".join(f"{base}:{a}" for a in visible) or ("(none for this key)" if existing else "none"))
                + ".",
                code="model_not_found",
                param="model",
            )
        return adapter

    def _visible(self, api_key: Optional[ApiKey]) -> str:
        names = [n for n in self.model_names if api_key is None or api_key.may_use(n)]
        if api_key is not None and api_key.allowed_models is not None:  # keys limited to adapters
            adapters = (n for n in api_key.allowed_models if n not in names and split_adapter(n)[1] is not None)
            names += sorted(n for n in adapters if split_adapter(n)[0] in self.model_names)
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
    adapters: Optional[AdapterCatalog] = None,
) -> ASGIApp:
    gateway = GatewayMiddleware(
        app,
        model_names=model_names,
        max_request_bytes=config.max_request_bytes,
        key_store=key_store,
        readiness=readiness,
        record=record,
        traffic=traffic,
        adapters=adapters,
    )
    return with_cors(gateway, config.cors_allow_origins)


def _normalized_responses(send: Send) -> Send:
    """Pass responses on, dropping the inner apps' CORS headers (our policy is the outer one),
    rewriting their JSON error bodies into OpenAI's shape and adding Retry-After to their 503/429."""
    return _with_retry_after(
        with_response_headers(rewrite_response_body(send, _is_json_error, _as_openai_error), _without_cors)
    )


def _with_retry_after(send: Send) -> Send:
    """Ray Serve refuses a request over a model's max_queued_requests with 503 (BackPressureError)
    and no Retry-After; clients and their retry logic need one."""

    async def sent(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            headers = list(message.get("headers", []))
            if not any(key.lower() == b"retry-after" for key, _ in headers):
                retry_after = (b"retry-after", str(RETRY_AFTER_OVERLOADED_S).encode())
                message = {**message, "headers": [*headers, retry_after]}
        await send(message)

    return sent


def _is_json_error(start: Message) -> bool:
    return start["status"] >= 400 and (b"content-type", b"application/json") in start.get("headers", [])


def _as_openai_error(start: Message, body: bytes) -> bytes:
    return openai_error_from_body(start["status"], body)


def _without_cors(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if not k.lower().startswith(b"access-control-")]
