"""The multi-model ingress: Ray Serve LLM's OpenAiIngress behind our gateway middleware."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from fastapi import FastAPI
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from starlette.types import ASGIApp
from vllm.v1.engine.exceptions import EngineDeadError

from llm_serving._ray import (
    SetRequestIdMiddleware,
    add_exception_handling_middleware,
    add_http_metrics_middleware,
    asgi_app_of,
    default_handles,
    metrics_lifespan,
    serve_controller_client,
    set_asgi_app,
    with_engine_response_hook,
)
from llm_serving.config import GatewayConfig
from llm_serving.feature_layers import FeatureLayers
from llm_serving.gateway.metrics import GatewayMetrics
from llm_serving.gateway.middleware import build_gateway, key_store_for
from llm_serving.gateway.model_dispatch import ENGINE_CALL_ROUTES
from llm_serving.gateway.stream_failures import EngineUnavailable, StreamFailureLayer
from llm_serving.gateway.traffic import TrafficControl
from llm_serving.lora import AdapterCatalog, AdapterLoadError, AdapterUnavailable, split_adapter

logger = logging.getLogger(__name__)

READINESS_POLL_INTERVAL_S = 1.0
# How often a request waiting for the engine's first response checks that its model is still ready.
FIRST_RESPONSE_READINESS_CHECK_S = 0.5
# A request still waiting this long for its engine's first response is logged once, with what the
# gateway knew of its model: a trace for the case the readiness check does not end (a rehearsal
# saw requests sent 1 s after an engine replica's death wait 60 s for its replacement).
FIRST_RESPONSE_SLOW_LOG_S = 10.0


def _ingress_fastapi_app() -> FastAPI:
    """Ray Serve LLM's ingress app without its allow-all CORS middleware (ours replaces it)."""
    app = FastAPI(lifespan=metrics_lifespan)
    add_exception_handling_middleware(app)
    add_http_metrics_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    return app


def readiness_from_details(
    details: Dict[str, Any], deployments: Dict[str, Tuple[str, str]]
) -> Dict[str, Tuple[bool, int]]:
    """Per model: (ready, running replicas), from Serve's instance details (the dict the controller
    returns, that serve.status() parses). A model is ready when its deployment has a running
    replica, or is healthy at zero replicas (scaled to zero: the first request wakes it up rather
    than failing)."""
    ready = {}
    applications = details.get("applications") or {}
    for model, (app_name, deployment_name) in deployments.items():
        deployment = (applications.get(app_name) or {}).get("deployments", {}).get(deployment_name)
        if deployment is None:
            ready[model] = (False, 0)
            continue
        running = sum(1 for replica in deployment.get("replicas", []) if replica.get("state") == "RUNNING")
        ready[model] = (running > 0 or deployment.get("status") == "HEALTHY", running)
    return ready


def _serve_instance_details() -> Dict[str, Any]:
    return serve_controller_client().get_serve_details()  # blocks: run it in a thread


class ModelReadiness:
    """Keeps a per-model ready flag fresh by polling Serve's controller in the background.

    It reads the controller's details dict, not serve.status(): that one parses the dict into
    ServeInstanceDetails, whose RequestRouterConfig validator cloudpickles each deployment's router
    class (ray/serve/config.py, _serialize_request_router_cls). Once a second per deployment, that was
    a fifth of the gateway replica's CPU under load on two cores (py-spy, issue 17)."""

    def __init__(self, handles: Dict[str, DeploymentHandle]):
        self._deployments = {model: (h.app_name, h.deployment_name) for model, h in handles.items()}
        self._ready = {model: False for model in handles}
        self._running = {model: 0 for model in handles}
        self.polled_at: Optional[float] = None  # time.monotonic() of the last poll that succeeded
        self._task: Optional[asyncio.Task] = None

    def __call__(self) -> Dict[str, bool]:
        return self._ready

    def running_replicas(self, model: str) -> int:
        return self._running.get(model, 0)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                details = await asyncio.to_thread(_serve_instance_details)
                states = readiness_from_details(details, self._deployments)
                self._ready = {model: ready for model, (ready, _) in states.items()}
                self._running = {model: running for model, (_, running) in states.items()}
                self.polled_at = time.monotonic()
            except Exception:  # keep the last known state; the next poll may succeed
                logger.warning("could not read Serve status for model readiness", exc_info=True)
            await asyncio.sleep(READINESS_POLL_INTERVAL_S)


class EngineCalls(with_engine_response_hook(OpenAiIngress)):  # type: ignore[misc]
    """Ray Serve LLM's OpenAiIngress calls to the engines' handles, with replica deaths and models
    that stop being ready while a request waits turned into 503s (engine_responses). The gateway
    deployment serves them; so does a direct model's engine replica, for the other models."""

    def __init__(
        self,
        llm_deployments: Dict[str, DeploymentHandle],
        model_cards: Dict[str, Any],
        *,
        lora_paths: Optional[Dict[str, str]] = None,
    ):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._readiness = ModelReadiness(llm_deployments)

    async def engine_responses(self, responses: AsyncIterator[Any], model: Optional[str]) -> AsyncIterator[Any]:
        """The engine's responses (see _ray.with_engine_response_hook), with what clients see when
        its replica dies (killed, out of memory, its node lost) made explicit, instead of Ray Serve
        LLM's 500, a stream cut without a word, or a request waiting in Serve's router for a
        replacement replica (a minute or more):
        - the replica's death, or its vLLM engine's (EngineDeadError: the replica answers every
          request with it until Serve's health check replaces the replica, tens of seconds), is
          EngineUnavailable: 503 + Retry-After before the stream starts, an error event inside it
          (gateway/stream_failures.py);
        - a request still waiting for its first response when the model stops being ready (no
          running replica: the one it was routed to died) is given up the same way. Not when the
          model had no running replica as the request came: that request is waking a model scaled
          to zero, and Serve's router holds it while a replica starts (values/scale-to-zero.yaml);
        - a LoRA adapter the replica could not load (bad files, too large a rank) is
          AdapterUnavailable: 503 with the reason, not Ray Serve LLM's 500."""
        responses = responses.__aiter__()
        try:
            first = await self._first_while_ready(responses, model)
            yield first
            async for response in responses:
                yield response
        except (RayActorError, EngineDeadError) as error:
            raise EngineUnavailable(model) from error
        except (AdapterLoadError, RayTaskError) as error:
            # The replica could not load the request's adapter (Serve re-raises the replica's own
            # exception; a RayTaskError wraps it on Ray's other paths).
            failure = error.cause if isinstance(error, RayTaskError) else error
            if isinstance(failure, AdapterLoadError):
                raise AdapterUnavailable(failure.model, failure.reason) from None
            raise

    async def _first_while_ready(self, responses: AsyncIterator[Any], model: Optional[str]) -> Any:
        model = split_adapter(model)[0] if model is not None else None  # readiness is the base model's
        had_replicas = model is not None and self._readiness.running_replicas(model) > 0
        first = asyncio.ensure_future(responses.__anext__())
        started, logged = time.monotonic(), False
        while True:
            done, _ = await asyncio.wait({first}, timeout=FIRST_RESPONSE_READINESS_CHECK_S)
            if done:
                return first.result()
            if had_replicas and model is not None and self._readiness().get(model) is False:
                first.cancel()
                raise EngineUnavailable(model)
            if not logged and time.monotonic() - started >= FIRST_RESPONSE_SLOW_LOG_S:
                logged = True
                self._log_slow_first_response(model, had_replicas, time.monotonic() - started)

    def _log_slow_first_response(self, model: Optional[str], had_replicas: bool, waited_s: float) -> None:
        polled_at = self._readiness.polled_at
        logger.warning(
            "A request to model %s has waited %.0f s for its engine's first response: model ready %s, "
            "%d running replicas (%s replicas as it came), Serve's view read %s.",
            model,
            waited_s,
            self._readiness().get(model) if model else None,
            self._readiness.running_replicas(model) if model else 0,
            "with" if had_replicas else "without",
            "never" if polled_at is None else f"{time.monotonic() - polled_at:.1f} s ago",
        )


class _GatewayOpenAiIngress(EngineCalls):
    def __init__(
        self,
        llm_deployments: Dict[str, DeploymentHandle],
        model_cards: Dict[str, Any],
        *,
        gateway: Dict[str, Any],
        lora_paths: Optional[Dict[str, str]] = None,
        adapter_sources: Optional[Dict[str, str]] = None,
        rag: Optional[Dict[str, Any]] = None,
        rag_store: Optional[DeploymentHandle] = None,
        batch: Optional[Dict[str, Any]] = None,
        batch_runner: Optional[DeploymentHandle] = None,
    ):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._model_names = list(model_cards)
        # Each LoRA model's lora.source: the gateway checks and lists adapters from local folders too,
        # which Ray's own lora_paths cannot hold (cloud prefixes only).
        self._adapters = AdapterCatalog(adapter_sources or {})
        self._features = FeatureLayers(rag, rag_store, batch, batch_runner)
        self._gateway_config = GatewayConfig.model_validate(gateway)
        self._key_store = key_store_for(self._gateway_config)
        self._traffic = TrafficControl(self._gateway_config, self._model_names, self._key_store)

    async def reconfigure(self, user_config: Dict[str, Any]) -> None:
        """Serve's user_config: aliases, sticky routing and limits, applied in place."""
        await self._traffic.reconfigure(user_config)

    async def model(self, model_id: str) -> Optional[Any]:
        """A served model's card, or an existing adapter's: its base model's card under its own id."""
        base, adapter = split_adapter(model_id)
        if adapter is None or not self._adapters.has_adapters(base):
            return await super().model(model_id)
        if adapter not in await self._adapters.adapters(base):
            return None
        base_card = await super().model(base)
        return base_card.model_copy(update={"id": model_id}) if base_card is not None else None

    async def models(self) -> Any:
        """GET /v1/models: the served models, each followed by the adapters it has."""
        listing = await super().models()
        cards = []
        for card in listing.data:
            cards.append(card)
            for adapter in await self._adapters.adapters(card.id):
                cards.append(card.model_copy(update={"id": f"{card.id}:{adapter}"}))
        return listing.model_copy(update={"data": cards})


def engine_calls_app(
    llm_deployments: Dict[str, DeploymentHandle], model_cards: Dict[str, Any]
) -> Tuple[ASGIApp, ModelReadiness]:
    """The inference routes of EngineCalls as an app of their own, outside a deployment, and its
    models' readiness (polling): a direct model's engine replica serves the other models with it."""
    calls = EngineCalls(llm_deployments, model_cards)
    app = _ingress_fastapi_app()
    for path, endpoint in ENGINE_CALL_ROUTES.items():
        app.post(path)(getattr(calls, endpoint))
    calls._readiness.start()
    return StreamFailureLayer(app), calls._readiness


# make_fastapi_ingress builds the class at import (Ray Serve LLM's documented way to add routes).
class GatewayIngress(make_fastapi_ingress(_GatewayOpenAiIngress, app=_ingress_fastapi_app())):  # type: ignore[misc]
    async def __init__(self, *args, **kwargs):
        await super().__init__(*args, **kwargs)
        self._readiness.start()
        app: ASGIApp = StreamFailureLayer(asgi_app_of(self))
        app = self._features.around(app, lambda: default_handles(self))
        set_asgi_app(
            self,
            build_gateway(
                app,
                self._gateway_config,
                list(self._model_names),
                self._key_store,
                self._readiness,
                record=GatewayMetrics().record,
                traffic=self._traffic,
                adapters=self._adapters,
            ),
        )
