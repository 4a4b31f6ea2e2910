"""The multi-model ingress: Ray Serve LLM's OpenAiIngress behind our gateway middleware."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional, Tuple

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from llm_serving._ray import (
    SetRequestIdMiddleware,
    add_exception_handling_middleware,
    add_http_metrics_middleware,
    asgi_app_of,
    default_handles,
    metrics_lifespan,
    set_asgi_app,
)
from llm_serving.config import GatewayConfig
from llm_serving.gateway.metrics import GatewayMetrics
from llm_serving.gateway.middleware import build_gateway, key_store_for
from llm_serving.gateway.traffic import TrafficControl
from llm_serving.rag.routes import rag_layer

logger = logging.getLogger(__name__)

READINESS_POLL_INTERVAL_S = 1.0


def _ingress_fastapi_app() -> FastAPI:
    """Ray Serve LLM's ingress app without its allow-all CORS middleware (ours replaces it)."""
    app = FastAPI(lifespan=metrics_lifespan)
    add_exception_handling_middleware(app)
    add_http_metrics_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    return app


def readiness_from_status(status, deployments: Dict[str, Tuple[str, str]]) -> Dict[str, bool]:
    """A model is ready when its deployment has a running replica, or is healthy at zero replicas
    (scaled to zero: the first request wakes it up rather than failing)."""
    ready = {}
    for model, (app_name, deployment_name) in deployments.items():
        application = status.applications.get(app_name)
        deployment = application.deployments.get(deployment_name) if application else None
        if deployment is None:
            ready[model] = False
            continue
        running = deployment.replica_states.get("RUNNING", 0)
        ready[model] = running > 0 or deployment.status == "HEALTHY"
    return ready


class ModelReadiness:
    """Keeps a per-model ready flag fresh by polling Serve's status in the background."""

    def __init__(self, handles: Dict[str, DeploymentHandle]):
        self._deployments = {model: (h.app_name, h.deployment_name) for model, h in handles.items()}
        self._ready = {model: False for model in handles}
        self._task: Optional[asyncio.Task] = None

    def __call__(self) -> Dict[str, bool]:
        return self._ready

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                self._ready = readiness_from_status(status, self._deployments)
            except Exception:  # keep the last known state; the next poll may succeed
                logger.warning("could not read Serve status for model readiness", exc_info=True)
            await asyncio.sleep(READINESS_POLL_INTERVAL_S)


class _GatewayOpenAiIngress(OpenAiIngress):
    def __init__(
        self,
        llm_deployments: Dict[str, DeploymentHandle],
        model_cards: Dict[str, Any],
        *,
        gateway: Dict[str, Any],
        lora_paths: Optional[Dict[str, str]] = None,
        rag: Optional[Dict[str, Any]] = None,
        rag_store: Optional[DeploymentHandle] = None,
    ):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._model_names = list(model_cards)
        self._rag, self._rag_store = rag, rag_store
        self._gateway_config = GatewayConfig.model_validate(gateway)
        self._key_store = key_store_for(self._gateway_config)
        self._readiness = ModelReadiness(llm_deployments)
        self._traffic = TrafficControl(self._gateway_config, self._model_names, self._key_store)

    async def reconfigure(self, user_config: Dict[str, Any]) -> None:
        """Serve's user_config: aliases, sticky routing and limits, applied in place."""
        await self._traffic.reconfigure(user_config)


# make_fastapi_ingress builds the class at import (Ray Serve LLM's documented way to add routes).
class GatewayIngress(make_fastapi_ingress(_GatewayOpenAiIngress, app=_ingress_fastapi_app())):  # type: ignore[misc]
    async def __init__(self, *args, **kwargs):
        await super().__init__(*args, **kwargs)
        self._readiness.start()
        app = asgi_app_of(self)
        if self._rag is not None:  # /v1/rag/... and `rag` on chat, inside the gateway's checks
            app = rag_layer(app, self._rag, default_handles(self), self._rag_store)
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
            ),
        )
