"""The RAG HTTP layer, as ASGI inside the gateway (so auth, size limits, errors and metrics are the
gateway's): the /v1/rag/... API, and chat completions that carry `rag: {collection, top_k}`.

A retrieval-augmented chat is the ordinary chat request with the retrieved sources put into a
system message; the response is the ordinary one plus a `rag` object naming the chunks used
(`citations`), on the completion itself or, for streams, on the first chunk.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serving.gateway.errors import GatewayError, send_json
from llm_serving.gateway.middleware import API_KEY_SCOPE, RAG_PATH_PREFIX, replay_body, with_content_length
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
    def __init__(self, app: ASGIApp, service: RagService):
        self.app = app
        self.service = service
        collection = r"/v1/rag/collections/(?P<name>[^/]+)"
        self._routes: List[Tuple[re.Pattern, Dict[str, Handler]]] = [
            (re.compile(r"/v1/rag/collections"), {"GET": self._list_collections, "POST": self._create_collection}),
            (re.compile(collection), {"GET": self._get_collection, "DELETE": self._delete_collection}),
            (re.compile(collection + r"/documents"), {"POST": self._add_documents}),
            (re.compile(collection + r"/documents/(?P<document_id>.+)"), {"DELETE": self._delete_document}),
            (re.compile(collection + r"/search"), {"POST": self._search}),
        ]

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
                body = await _read_body(receive)
                payload = _json_object(body)
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
        for pattern, methods in self._routes:
            match = pattern.fullmatch(scope["path"])
            if match is None:
                continue
            handler = methods.get(scope["method"])
            if handler is None:
                raise GatewayError(
                    405, f"{scope['method']} is not allowed here; use {', '.join(methods)}.", code="method_not_allowed"
                )
            payload = None
            if scope["method"] == "POST":
                payload = _json_object(await _read_body(receive))
                if not isinstance(payload, dict):
                    raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
            status, result = await handler(scope, payload, **match.groupdict())
            await send_json(send, status, json.dumps(result).encode())
            return
        raise GatewayError(404, f"No RAG endpoint at {scope['path']}; see /v1/rag/collections.", code="not_found")

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
        query = retrieval_query(messages) if isinstance(messages, list) else None
        if query is None:
            raise GatewayError(
                400, "A chat with `rag` needs a user message with text to search for.", code="invalid_request",
                param="messages",
            )
        collection = await self._collection(scope, options.collection)
        hits = await self.service.search(collection, query, None, top_k)
        payload["messages"], used = build_rag_messages(
            messages, [hit["text"] for hit in hits], self.service.config.instructions,
            self.service.config.max_context_chars,
        )
        rag = {
            "collection": options.collection,
            "citations": [{"index": number, **hit} for number, hit in enumerate(hits[:used], start=1)],
        }
        body = json.dumps(payload).encode()
        scope = with_content_length(scope, len(body))
        await self.app(scope, replay_body(body, receive), _with_rag_field(send, rag))


def _collection_object(collection: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": collection["name"], "object": "rag.collection", **collection}


def _with_rag_field(send: Send, rag: Dict[str, Any]) -> Callable[[Message], Awaitable[None]]:
    """Add `rag` to a successful response: to the JSON completion, or to the first SSE chunk."""
    start: Optional[Message] = None
    mode = ""  # "json" (buffer and rewrite), "stream" (rewrite the first event) or "pass"
    buffered: List[bytes] = []
    pending = b""

    async def rewritten(message: Message) -> None:
        nonlocal start, mode, pending
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            content_type = headers.get(b"content-type", b"")
            if message["status"] != 200:
                mode = "pass"
            elif content_type.startswith(b"text/event-stream"):
                mode = "stream"
            elif content_type.startswith(b"application/json"):
                mode, start = "json", message
                return
            else:
                mode = "pass"
            await send(message)
            return
        if message["type"] != "http.response.body" or mode == "pass":
            await send(message)
            return
        if mode == "json":
            buffered.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            completion = json.loads(b"".join(buffered))
            completion[RAG_FIELD] = rag
            body = json.dumps(completion).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        # Stream: hold bytes until the first complete event, put `rag` into it, then pass through.
        pending += message.get("body", b"")
        more = message.get("more_body", False)
        end = pending.find(b"\n\n")
        if end < 0 and more:
            return
        if end >= 0 and pending.startswith(b"data: {"):
            event = json.loads(pending[len(b"data: ") : end])
            event[RAG_FIELD] = rag
            pending = b"data: " + json.dumps(event).encode() + pending[end:]
        await send({**message, "body": pending})
        pending = b""
        mode = "pass"

    return rewritten


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _json_object(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as error:
        raise GatewayError(400, f"Request body is not valid JSON: {error}", code="invalid_json") from None


def rag_layer(app: ASGIApp, rag: Dict[str, Any], model_handles: Dict[str, Any], store: Any) -> ASGIApp:
    """Wrap the ingress app in the RAG routes. `rag` is what build_app binds: the RagConfig dump and
    the names of the embedding models; `model_handles` are the ingress's handles per model."""
    from llm_serving.config import RagConfig

    embedders = {name: model_handles[name] for name in rag["embedding_models"]}
    return RagRoutes(app, RagService(RagConfig.model_validate(rag["config"]), embedders, store))
