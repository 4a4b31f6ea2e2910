"""RAG and the Batch API as layers around the ingress app, inside the gateway's checks. The gateway
deployment (ingress.GatewayIngress) and a direct model's replica (server.GatewayLLMServer) both wrap
their app with FeatureLayers, so the two topologies get the same layers in the same order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from llm_serving.batch.routes import batch_layer
from llm_serving.rag.routes import rag_layer


@dataclass(frozen=True)
class FeatureLayers:
    """What build_app binds for the features: the RagConfig dump and embedding models (`rag`) with
    the store's handle, and the BatchConfig dump (`batch`) with the runner's handle; None when off."""

    rag: Optional[Dict[str, Any]] = None
    rag_store: Optional[DeploymentHandle] = None
    batch: Optional[Dict[str, Any]] = None
    batch_runner: Optional[DeploymentHandle] = None

    def around(self, app: ASGIApp, model_handles: Callable[[], Dict[str, DeploymentHandle]]) -> ASGIApp:
        """`app` inside the features that are on. `model_handles` gives a handle per model, for RAG's
        embeddings and token counts; it is called only when RAG is on."""
        if self.rag is not None:  # /v1/rag/... and `rag` on chat
            app = rag_layer(app, self.rag, model_handles(), self.rag_store)
        if self.batch is not None:  # /v1/files and /v1/batches
            app = batch_layer(app, self.batch, self.batch_runner)
        return app
