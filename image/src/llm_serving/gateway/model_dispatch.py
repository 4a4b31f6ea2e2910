"""The direct-streaming path: the engine replica of the model (the only one, or gateway.direct_model)
is the ingress, and its own requests go to vLLM's app in the replica (no hop). With several models
the others' go to their engine deployments over Serve handles, as the gateway deployment sends them
(ingress.engine_calls_app); /v1/models lists every model, which vLLM's app alone would not.

Inside the gateway middleware, which has checked the request and left its model in the scope.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_serving.gateway.errors import GatewayError, send_json
from llm_serving.gateway.middleware import MODEL_PATH_PREFIX, MODEL_SCOPE, MODELS_PATH

# The POST routes of Ray Serve LLM's ingress that name a model in a JSON body (its DEFAULT_ENDPOINTS;
# transcriptions take a form, which the gateway does not read for a model), and the engine call each
# makes (ingress.EngineCalls).
ENGINE_CALL_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/score": "score",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}


class LocalModelRoutes:
    """vLLM's app in the replica, which has only its model's task's routes: an inference route it
    lacks (embeddings on a chat model, chat on an embedding model) gets a 400 naming the routes the
    model serves, as an engine deployment's model refuses it in the gateway deployment, instead of
    FastAPI's bare 404 "Not Found"."""

    def __init__(self, model: str, app: ASGIApp, post_paths: Iterable[str]):
        self.model, self.app = model, app
        post_paths = set(post_paths)
        self.served = [path for path in ENGINE_CALL_ROUTES if path in post_paths]
        self.unserved = set(ENGINE_CALL_ROUTES) - post_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.unserved:
            error = GatewayError(
                400,
                f"The model `{self.model}` does not support {scope['path']}; it serves {', '.join(self.served)}.",
                code="invalid_request",
            )
            await error.send(send)
            return
        await self.app(scope, receive, send)


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
