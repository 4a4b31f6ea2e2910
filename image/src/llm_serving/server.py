"""The engine replica: Ray Serve LLM's LLMServer, extended at its `server_cls` seam."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ray.serve.llm.deployment import LLMServer

from llm_serving._ray import clear_engine_config, enable_engine_tokenize
from llm_serving.builtin_models import resolve_model_source
from llm_serving.config import GatewayConfig
from llm_serving.gateway.metrics import GatewayMetrics
from llm_serving.gateway.middleware import build_gateway, key_store_for
from llm_serving.gateway.traffic import TrafficControl


class GatewayLLMServer(LLMServer):
    """LLMServer that resolves `builtin://` sources on the node that loads the weights and, when it
    is the ingress itself (direct streaming, one model), wraps vLLM's app in the gateway."""

    # Serve awaits an async __init__ (LLMServer's own is one); mypy knows only the plain kind.
    async def __init__(self, llm_config, *, gateway: Optional[Dict[str, Any]] = None, **kwargs):  # type: ignore[misc]
        source = llm_config.model_loading_config.model_source
        if isinstance(source, str):
            llm_config = llm_config.model_copy(deep=True)
            llm_config.model_loading_config.model_source = resolve_model_source(source)
            # The engine config was cached (by the builder) with the unresolved source.
            clear_engine_config(llm_config)
        self._model_id = llm_config.model_id
        self._gateway_config = GatewayConfig.model_validate(gateway) if gateway is not None else None
        # Read the keys before the engine loads, so a missing Secret fails the replica at once.
        self._key_store = key_store_for(self._gateway_config) if self._gateway_config else None
        self._traffic = (
            TrafficControl(self._gateway_config, [self._model_id], self._key_store) if self._gateway_config else None
        )
        await super().__init__(llm_config, **kwargs)
        enable_engine_tokenize(self.engine)  # the RAG layer counts prompt tokens with it

    async def reconfigure(self, user_config: Dict[str, Any]) -> None:
        """Serve's user_config when this replica is the ingress (direct streaming): aliases, sticky
        routing and limits, applied in place, without touching the engine."""
        if self._traffic is not None:
            await self._traffic.reconfigure(user_config)

    async def __serve_build_asgi_app__(self):
        app = await super().__serve_build_asgi_app__()
        if self._gateway_config is None:
            return app
        return build_gateway(
            app,
            self._gateway_config,
            [self._model_id],
            self._key_store,
            record=GatewayMetrics().record,
            traffic=self._traffic,
        )
