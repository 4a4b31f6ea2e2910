"""The RAG HTTP layer's own decisions, the ones taken before any store or model is asked: its route
table (shared with the metrics' labels), its refusals (404, 405, bad JSON), the pass-through of
plain chats, and the `rag` object put into JSON and streamed completions. The e2e tests
(tests/e2e/test_rag.py) cover the rest with the real store and embeddings."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llm_serving.config import RagConfig
from llm_serving.gateway.metrics import route_label
from llm_serving.rag.context import EngineTokenCounter
from llm_serving.rag.endpoints import RAG_ENDPOINTS, match_rag_endpoint
from llm_serving.rag.routes import RagRoutes, _with_rag_field
from llm_serving.rag.service import RagService

RAG = {"collection": "manuals", "citations": [{"index": 1, "document_id": "d1", "text": "bees"}]}


async def echo(request: Request):
    return JSONResponse({"received": json.loads(await request.body())})


def rag_app():
    # No store, embedders or engines: every request here is answered before any is needed.
    service = RagService(RagConfig(store={"uri": "/data/rag/milvus.db"}), {}, store=None)
    app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
    return RagRoutes(app, service, EngineTokenCounter({}))


def request(method, path, content=None):
    async def go():
        transport = httpx.ASGITransport(app=rag_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://rag") as client:
            return await client.request(method, path, content=content, headers={"content-type": "application/json"})

    return asyncio.run(go())


@pytest.mark.parametrize("path, template, names", [
    ("/v1/rag/collections", "/v1/rag/collections", {}),
    ("/v1/rag/collections/manuals", "/v1/rag/collections/{name}", {"name": "manuals"}),
    ("/v1/rag/collections/manuals/documents", "/v1/rag/collections/{name}/documents", {"name": "manuals"}),
    ("/v1/rag/collections/manuals/documents/a/b", "/v1/rag/collections/{name}/documents/{id}",
     {"name": "manuals", "document_id": "a/b"}),
    ("/v1/rag/collections/manuals/search", "/v1/rag/collections/{name}/search", {"name": "manuals"}),
])
def test_one_route_table_names_the_handler_and_the_metrics_label(path, template, names):
    endpoint, found = match_rag_endpoint(path)
    assert (endpoint.template, found) == (template, names)
    assert route_label(path) == template


def test_every_operation_of_the_table_has_a_handler():
    handlers = rag_app()._handlers
    assert set(handlers) == {op for endpoint in RAG_ENDPOINTS for op in endpoint.operations.values()}
    assert all(callable(handler) for handler in handlers.values())


@pytest.mark.parametrize("method, path, content, status, code, message", [
    ("GET", "/v1/rag/anything", None, 404, "not_found", "No RAG endpoint at /v1/rag/anything"),
    ("PUT", "/v1/rag/collections", b"{}", 405, "method_not_allowed", "PUT is not allowed here; use GET, POST."),
    ("POST", "/v1/rag/collections", b"{not json", 400, "invalid_json", "Request body is not valid JSON"),
    ("POST", "/v1/rag/collections/manuals/search", b"[1]", 400, "invalid_json", "Request body must be a JSON object."),
    ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json", "Request body is not valid JSON"),
])
def test_refusals_are_openai_errors_with_the_gateways_text(method, path, content, status, code, message):
    response = request(method, path, content)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith(message)


def test_a_chat_without_rag_reaches_the_app_unchanged():
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'
    response = request("POST", "/v1/chat/completions", body)
    assert response.json() == {"received": json.loads(body)}


async def still_connected():
    await asyncio.Event().wait()


def respond(response):
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    asyncio.run(response(scope, still_connected, _with_rag_field(send, RAG)))
    return dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_rag_is_added_to_a_json_completion_with_its_new_length():
    headers, body = respond(JSONResponse({"id": "c1", "choices": []}))
    assert json.loads(body) == {"id": "c1", "choices": [], "rag": RAG}
    assert int(headers[b"content-length"]) == len(body)


def test_rag_is_added_to_the_first_streamed_chunk_only():
    async def events():
        yield b'data: {"id": "c1", "choices": []}\n\ndata: {"id": '  # the second event split across chunks
        yield b'"c1", "choices": []}\n\ndata: [DONE]\n\n'

    _, body = respond(StreamingResponse(events(), media_type="text/event-stream"))
    chunks = [json.loads(event[len(b"data: "):]) for event in body.split(b"\n\n")[:2]]
    assert chunks == [{"id": "c1", "choices": [], "rag": RAG}, {"id": "c1", "choices": []}]
    assert body.endswith(b"data: [DONE]\n\n")


def test_errors_pass_without_rag():
    headers, body = respond(JSONResponse({"error": {"message": "bad"}}, status_code=400))
    assert json.loads(body) == {"error": {"message": "bad"}}
