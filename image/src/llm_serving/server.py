"""The engine replica: Ray Serve LLM's LLMServer, extended at its `server_cls` seam."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.deployment import LLMServer

from llm_serving._ray import (
    DiskMultiplexConfig,
    LoraModelLoader,
    clear_engine_config,
    enable_engine_tokenize,
    next_lora_int_id,
    with_adapter_load_errors,
)
from llm_serving.builtin_models import resolve_adapters_source, resolve_model_source
from llm_serving.config import GatewayConfig
from llm_serving.feature_layers import FeatureLayers
from llm_serving.gateway.metrics import GatewayMetrics
from llm_serving.gateway.middleware import build_gateway, key_store_for
from llm_serving.gateway.model_dispatch import LocalModelRoutes, ModelDispatch
from llm_serving.gateway.traffic import TrafficControl
from llm_serving.lora import ADAPTER_CONFIG_FILE, AdapterLoadError, is_remote, split_adapter


class LocalAdapterLoader(LoraModelLoader):
    """Ray Serve LLM's adapter loader, which also takes adapters from a local folder (in place).

    `adapters_source` is the model's `lora.source`; a cloud source goes to Ray's own download."""

    adapters_source: Optional[str] = None  # set on a subclass per replica, see for_source

    @classmethod
    def for_source(cls, source: str) -> type:
        return type(cls.__name__, (cls,), {"adapters_source": source})

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        source = self.adapters_source
        if source is None or is_remote(source):
            return await super().load_model_from_config(lora_model_id, llm_config)
        _, adapter = split_adapter(lora_model_id)
        folder = Path(resolve_adapters_source(source)) / (adapter or "")
        config_file = folder / ADAPTER_CONFIG_FILE
        if not adapter or not config_file.is_file():
            raise FileNotFoundError(f"adapter `{adapter}` has no {ADAPTER_CONFIG_FILE} under {source}")
        try:
            max_length = json.loads(config_file.read_text()).get("max_length")
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{config_file} is not a JSON object: {error}") from None
        return DiskMultiplexConfig(
            model_id=lora_model_id,
            max_total_tokens=max_length,
            local_path=str(folder),
            lora_assigned_int_id=next_lora_int_id(),
        )


class GatewayLLMServer(with_adapter_load_errors(LLMServer, AdapterLoadError)):  # type: ignore[misc]
    """LLMServer that resolves `builtin://` sources on the node that loads the weights, loads LoRA
    adapters from local folders too (`adapters_source`, a model's lora.source) and, when it is the
    ingress itself (direct streaming), wraps vLLM's app in the gateway. With several models (the
    direct one is gateway.direct_model), `other_models` are the others' engine deployments, which
    this replica reaches over handles, and `model_cards` every model's card for /v1/models. `rag`
    and `batch` (with their store and runner) add RAG and the Batch API inside the gateway, as in
    the gateway deployment."""

    # Serve awaits an async __init__ (LLMServer's own is one); mypy knows only the plain kind.
    async def __init__(  # type: ignore[misc]
        self,
        llm_config,
        *,
        gateway: Optional[Dict[str, Any]] = None,
        adapters_source: Optional[str] = None,
        other_models: Optional[Dict[str, DeploymentHandle]] = None,
        model_cards: Optional[Dict[str, Any]] = None,
        rag: Optional[Dict[str, Any]] = None,
        rag_store: Optional[DeploymentHandle] = None,
        batch: Optional[Dict[str, Any]] = None,
        batch_runner: Optional[DeploymentHandle] = None,
        **kwargs,
    ):
        if adapters_source is not None:
            kwargs["model_downloader"] = LocalAdapterLoader.for_source(adapters_source)
        source = llm_config.model_loading_config.model_source
        if isinstance(source, str):
            llm_config = llm_config.model_copy(deep=True)
            llm_config.model_loading_config.model_source = resolve_model_source(source)
            # The engine config was cached (by the builder) with the unresolved source.
            clear_engine_config(llm_config)
        self._model_id = llm_config.model_id
        self._other_models = other_models or {}
        self._every_model_card = model_cards or {}
        self._features = FeatureLayers(rag, rag_store, batch, batch_runner)
        self._gateway_config = GatewayConfig.model_validate(gateway) if gateway is not None else None
        # Read the keys before the engine loads, so a missing Secret fails the replica at once.
        self._key_store = key_store_for(self._gateway_config) if self._gateway_config else None
        self._traffic = (
            TrafficControl(self._gateway_config, self._model_names, self._key_store) if self._gateway_config else None
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
        post_paths = [route.path for route in app.routes if "POST" in (getattr(route, "methods", None) or ())]
        app = LocalModelRoutes(self._model_id, app, post_paths)
        readiness = None
        if self._other_models:
            from llm_serving.ingress import engine_calls_app  # Ray Serve LLM's ingress: only where used

            others_app, others_readiness = engine_calls_app(
                self._other_models, {name: self._every_model_card[name] for name in self._other_models}
            )
            cards = {name: card.model_dump(mode="json") for name, card in self._every_model_card.items()}
            app = ModelDispatch(self._model_id, app, others_app, cards)

            def readiness() -> Dict[str, bool]:
                return {self._model_id: True, **others_readiness()}  # this replica's own model serves

        app = self._features.around(app, self._every_model_handle)
        return build_gateway(
            app,
            self._gateway_config,
            self._model_names,
            self._key_store,
            readiness=readiness,
            record=GatewayMetrics().record,
            traffic=self._traffic,
        )

    def _every_model_handle(self) -> Dict[str, DeploymentHandle]:
        """A handle per model, this replica's own deployment included: RAG embeds and counts tokens
        over handles, as in the gateway deployment. The own one is made at run time, since a
        deployment cannot bind itself."""
        context = serve.get_replica_context()
        own = serve.get_deployment_handle(context.deployment, context.app_name)
        return {self._model_id: own, **self._other_models}

    @property
    def _model_names(self) -> List[str]:
        return [self._model_id, *self._other_models]
