"""Several models on the direct-streaming path: the engine replica of gateway.direct_model is the
ingress. Its own model's requests go to vLLM's app in the replica (no hop); the other models' go to
their engine deployments over Serve handles, as the gateway deployment sends them
(ingress.engine_calls_app); /v1/models lists every model, which vLLM's app alone would not.

Inside the gateway middleware, which has checked the request and left its model in the scope.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_serving.gateway.errors import GatewayError, send_json
from llm_serving.gateway.middleware import MODEL_PATH_PREFIX, MODEL_SCOPE, MODELS_PATH


class ModelDispatch:
    def __init__(self, local_model: str, local_app: ASGIApp, others_app: ASGIApp, model_cards: Dict[str, Any]):
        self.local_model = local_model
        self.local_app, self.others_app = local_app, others_app
        self.model_cards = model_cards  # model -> its card as JSON (Ray Serve LLM's ModelCard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            model = scope.get(MODEL_SCOPE)
            if model is not None and model != self.local_model:
                await self.others_app(scope, receive, send)
                return
            if scope["method"] == "GET" and scope["path"] == MODELS_PATH:
                listing = {"object": "list", "data": list(self.model_cards.values())}
                await send_json(send, 200, json.dumps(listing).encode())
                return
            if scope["method"] == "GET" and scope["path"].startswith(MODEL_PATH_PREFIX):
                await self._send_card(scope["path"][len(MODEL_PATH_PREFIX) :], send)
                return
        await self.local_app(scope, receive, send)

    async def _send_card(self, model: str, send: Send) -> None:
        card = self.model_cards.get(model)
        if card is None:
            available = ", ".join(self.model_cards)
            error = GatewayError(
                404, f"The model `{model}` does not exist. Available models: {available}.", code="model_not_found"
            )
            await error.send(send)
            return
        await send_json(send, 200, json.dumps(card).encode())
