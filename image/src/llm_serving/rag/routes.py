"""The RAG HTTP layer, as ASGI inside the gateway (so auth, size limits, errors and metrics are the
gateway's): the /v1/rag/... API, and chat completions that carry `rag: {collection, top_k}`.

A retrieval-augmented chat is the ordinary chat request with the retrieved sources put into a
system message; the response is the ordinary one plus a `rag` object naming the chunks used
(`citations`), on the completion itself or, for streams, on the first chunk.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serving.gateway.asgi import (
    parse_json,
    parse_json_object,
    read_body,
    replay_body,
    rewrite_response_body,
    with_body,
)
from llm_serving.gateway.errors import GatewayError, send_json
from llm_serving.gateway.middleware import API_KEY_SCOPE
from llm_serving.rag.context import EngineTokenCounter, FittedContext, fit_context
from llm_serving.rag.endpoints import RAG_ENDPOINTS, RAG_PATH_PREFIX, match_rag_endpoint
from llm_serving.rag.prompt import build_rag_messages, retrieval_query
from llm_serving.rag.service import (
    AddDocumentsRequest,
    CreateCollectionRequest,
    RagChatOptions,
    RagService,
    SearchRequest,
    parse_request,
)

CHAT_PATH = "/v1/chat/completions"
RAG_FIELD = "rag"

Handler = Callable[..., Awaitable[Tuple[int, Any]]]


class RagRoutes:
    def __init__(self, app: ASGIApp, service: RagService, token_counter: EngineTokenCounter):
        self.app = app
        self.service = service
        self.token_counter = token_counter
        # Each operation of the route table, bound here so a name without a handler fails at start.
        self._handlers: Dict[str, Handler] = {
            operation: getattr(self, f"_{operation}")
            for endpoint in RAG_ENDPOINTS
            for operation in endpoint.operations.values()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            if path.startswith(RAG_PATH_PREFIX):
                await self._rag_api(scope, receive, send)
                return
            if path == CHAT_PATH and scope["method"] == "POST":
                body = await read_body(scope, receive)  # the gateway outside has applied the size limit
                payload = parse_json(body)  # not an object: the app refuses it as it would without `rag`
                if isinstance(payload, dict) and RAG_FIELD in payload:
                    await self._rag_chat(scope, payload, receive, send)
                    return
                receive = replay_body(body, receive)
        except GatewayError as error:
            await error.send(send)
            return
        await self.app(scope, receive, send)

    # /v1/rag/...

    async def _rag_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = match_rag_endpoint(scope["path"])
        if matched is None:
            raise GatewayError(404, f"No RAG endpoint at {scope['path']}; see /v1/rag/collections.", code="not_found")
        endpoint, names = matched
        operation = endpoint.operation(scope["method"])
        payload = parse_json_object(await read_body(scope, receive)) if scope["method"] == "POST" else None
        status, result = await self._handlers[operation](scope, payload, **names)
        await send_json(send, status, json.dumps(result).encode())

    def _check_key(self, scope: Scope, model: str) -> None:
        api_key = scope.get(API_KEY_SCOPE)
        if api_key is not None and not api_key.may_use(model):
            raise GatewayError(
                403,
                f"This API key ({api_key.name}) may not use embedding model `{model}`, which this collection uses.",
                code="model_not_allowed",
            )

    async def _collection(self, scope: Scope, name: str) -> Dict[str, Any]:
        collection = await self.service.store("get_collection", name)
        self._check_key(scope, collection["embedding_model"])
        return collection

    async def _list_collections(self, scope, payload) -> Tuple[int, Any]:
        collections = await self.service.store("list_collections")
        return 200, {"object": "list", "data": [_collection_object(c) for c in collections]}

    async def _create_collection(self, scope, payload) -> Tuple[int, Any]:
        request = parse_request(CreateCollectionRequest, payload)
        model = self.service.embedding_model_for_new_collection(request.embedding_model)
        self._check_key(scope, model)
        return 201, _collection_object(await self.service.create_collection(request, model))

    async def _get_collection(self, scope, payload, name: str) -> Tuple[int, Any]:
        return 200, _collection_object(await self._collection(scope, name))

    async def _delete_collection(self, scope, payload, name: str) -> Tuple[int, Any]:
        await self._collection(scope, name)
        await self.service.store("drop_collection", name)
        return 200, {"id": name, "object": "rag.collection", "deleted": True}

    async def _add_documents(self, scope, payload, name: str) -> Tuple[int, Any]:
        request = parse_request(AddDocumentsRequest, payload)
        collection = await self._collection(scope, name)
        stored = await self.service.add_documents(collection, request.documents)
        return 200, {"object": "list", "data": [{"object": "rag.document", **item} for item in stored]}

    async def _delete_document(self, scope, payload, name: str, document_id: str) -> Tuple[int, Any]:
        await self._collection(scope, name)
        chunks = await self.service.store("delete_document", name, document_id)
        return 200, {"id": document_id, "object": "rag.document", "deleted": True, "chunks": chunks}

    async def _search(self, scope, payload, name: str) -> Tuple[int, Any]:
        request = parse_request(SearchRequest, payload)
        top_k = self.service.top_k(request.top_k)
        collection = await self._collection(scope, name)
        hits = await self.service.search(collection, request.query, request.vector, top_k)
        return 200, {"object": "list", "data": [{"object": "rag.chunk", **hit} for hit in hits]}

    # Chat completions with `rag`

    async def _rag_chat(self, scope: Scope, payload: Dict[str, Any], receive: Receive, send: Send) -> None:
        options = parse_request(RagChatOptions, payload.pop(RAG_FIELD))
        top_k = self.service.top_k(options.top_k)
        messages = payload.get("messages")
        if not isinstance(messages, list) or (query := retrieval_query(messages)) is None:
            raise GatewayError(
                400,
                "A chat with `rag` needs a user message with text to search for.",
                code="invalid_request",
                param="messages",
            )
        collection = await self._collection(scope, options.collection)
        hits = await self.service.search(collection, query, None, top_k)
        fitted = await self._fit(payload, messages, hits)
        payload["messages"] = fitted.messages
        # `citations` are the sources in the prompt (as numbered there), best first; `dropped` counts
        # the retrieved chunks left out to fit the model's context window (or max_context_chars).
        rag = {
            "collection": options.collection,
            "citations": [{"index": number, **hits[position]} for number, position in enumerate(fitted.used, start=1)],
            "dropped": len(hits) - len(fitted.used),
        }
        scope, receive = with_body(scope, receive, json.dumps(payload).encode())
        await self.app(scope, receive, _with_rag_field(send, rag))

    async def _fit(
        self, payload: Dict[str, Any], messages: List[Dict[str, Any]], hits: List[Dict[str, Any]]
    ) -> FittedContext:
        config = self.service.config
        model = payload.get("model")
        if isinstance(model, str) and self.token_counter.knows(model):
            return await fit_context(
                self.token_counter, model, payload, messages, hits, config.instructions, config.max_context_chars
            )
        # Not a model of this app (the app answers that request with its own error): characters only.
        built, used = build_rag_messages(
            messages, [hit["text"] for hit in hits], config.instructions, config.max_context_chars
        )
        return FittedContext(built, list(range(used)))


def _collection_object(collection: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": collection["name"], "object": "rag.collection", **collection}


def _with_rag_field(send: Send, rag: Dict[str, Any]) -> Send:
    """Add `rag` to a successful response: to the JSON completion, or to the first SSE chunk."""

    def is_completion(start: Message) -> bool:
        return start["status"] == 200 and _content_type(start).startswith(b"application/json")

    def with_rag(start: Message, body: bytes) -> bytes:
        return json.dumps({**json.loads(body), RAG_FIELD: rag}).encode()

    return rewrite_response_body(_with_rag_on_first_event(send, rag), is_completion, with_rag)


def _with_rag_on_first_event(send: Send, rag: Dict[str, Any]) -> Send:
    """In a successful stream, hold bytes until the first complete event, put `rag` into it, then
    pass everything through as it comes."""
    streaming = False
    pending = b""

    async def rewritten(message: Message) -> None:
        nonlocal streaming, pending
        if message["type"] == "http.response.start":
            streaming = message["status"] == 200 and _content_type(message).startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and streaming:
            pending += message.get("body", b"")
            end = pending.find(b"\n\n")
            if end < 0 and message.get("more_body", False):
                return
            if end >= 0 and pending.startswith(b"data: {"):
                event = json.loads(pending[len(b"data: ") : end])
                event[RAG_FIELD] = rag
                pending = b"data: " + json.dumps(event).encode() + pending[end:]
            message = {**message, "body": pending}
            streaming, pending = False, b""
        await send(message)

    return rewritten


def _content_type(start: Message) -> bytes:
    return dict(start.get("headers", [])).get(b"content-type", b"")


def rag_layer(app: ASGIApp, rag: Dict[str, Any], model_handles: Dict[str, Any], store: Any) -> ASGIApp:
    """Wrap the ingress app in the RAG routes. `rag` is what build_app binds: the RagConfig dump and
    the names of the embedding models; `model_handles` are the ingress's handles per model."""
    from llm_serving.config import RagConfig

    embedders = {name: model_handles[name] for name in rag["embedding_models"]}
    service = RagService(RagConfig.model_validate(rag["config"]), embedders, store)
    return RagRoutes(app, service, EngineTokenCounter(model_handles))
