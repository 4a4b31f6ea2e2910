"""The gateway's ASGI toolkit, driven with real receive/send callables and real Starlette apps: body
reading and its limit, JSON errors, body replay, and response editing that never buffers a stream."""

import asyncio
import json

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from llm_serving.gateway.asgi import (
    header,
    is_json_request,
    parse_json,
    parse_json_object,
    read_body,
    replay_body,
    rewrite_response_body,
    with_body,
    with_content_length,
    with_response_headers,
)
from llm_serving.gateway.errors import GatewayError


def http_scope(headers=(), method="POST", path="/v1/chat/completions"):
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": list(headers)}


class Client:
    """The client side of one request: its body in chunks, then (if asked again) a disconnect."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.received = 0

    async def receive(self):
        if self.received < len(self.chunks):
            self.received += 1
            return {"type": "http.request", "body": self.chunks[self.received - 1],
                    "more_body": self.received < len(self.chunks)}
        return {"type": "http.disconnect"}


class Recorder:
    """A send that keeps every message the server sent."""

    def __init__(self):
        self.messages = []

    async def send(self, message):
        self.messages.append(message)

    @property
    def start(self):
        return self.messages[0]

    @property
    def body(self):
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def headers(self):
        return dict(self.start["headers"])


async def still_connected():
    """A client that stays for the whole response (Starlette's streams stop at a disconnect)."""
    await asyncio.Event().wait()


def run(coroutine):
    return asyncio.run(coroutine)


def refusal(coroutine_or_call):
    with pytest.raises(GatewayError) as refused:
        result = coroutine_or_call()
        if asyncio.iscoroutine(result):
            run(result)
    return refused.value


async def error_response(error: GatewayError):
    sent = Recorder()
    await error.send(sent.send)
    return sent.start["status"], json.loads(sent.body)["error"]


# Request side


def test_headers_are_found_case_insensitively_and_json_is_the_default_content_type():
    scope = http_scope([(b"Content-Type", b"application/json; charset=utf-8"), (b"x-session-id", b"s1")])
    assert header(scope, b"x-session-id") == "s1" and header(scope, b"authorization") is None
    assert is_json_request(scope)
    assert is_json_request(http_scope())  # OpenAI's clients always mean JSON
    assert not is_json_request(http_scope([(b"content-type", b"text/plain")]))


def test_read_body_joins_the_chunks_and_stops_at_a_disconnect():
    client = Client(b'{"a": ', b"1}")
    assert run(read_body(http_scope(), client.receive)) == b'{"a": 1}'
    assert client.received == 2
    assert run(read_body(http_scope(), Client().receive)) == b""  # disconnected before any body


def test_a_declared_length_over_the_limit_is_refused_before_anything_is_read():
    client = Client(b"x" * 2000)
    error = refusal(lambda: read_body(http_scope([(b"content-length", b"2000")]), client.receive, limit=1024))
    assert client.received == 0
    status, body = run(error_response(error))
    assert status == 413 and body["code"] == "request_too_large"
    assert body["message"] == "Request body is larger than the limit of 1024 bytes."


def test_an_undeclared_body_over_the_limit_is_refused_while_reading():
    client = Client(*[b"x" * 500] * 10)
    error = refusal(lambda: read_body(http_scope(), client.receive, limit=1024))
    assert error.status == 413 and client.received == 3  # stopped at the chunk that went over, not at the end
    assert run(read_body(http_scope(), Client(*[b"x" * 500] * 10).receive)) == b"x" * 5000  # no limit: all of it


def test_a_body_slower_than_the_deadline_is_refused_with_408():
    """A client that trickles its body (each chunk in time for an idle timeout, the whole never)."""
    class Trickle:
        received = 0

        async def receive(self):
            await asyncio.sleep(0.05)
            self.received += 1
            return {"type": "http.request", "body": b"x", "more_body": True}

    client = Trickle()
    error = refusal(lambda: read_body(http_scope([(b"content-length", b"2000")]), client.receive, timeout_s=0.3))
    status, body = run(error_response(error))
    assert status == 408 and body["code"] == "request_timeout" and body["type"] == "invalid_request_error"
    assert body["message"].startswith("The request body did not arrive within 0.3 s (")
    assert 3 <= client.received <= 7  # stopped at the deadline, not at the end of the 2000 bytes


@pytest.mark.parametrize("body, message", [
    (b"{not json", "Request body is not valid JSON: Expecting property name enclosed in double quotes"),
    (b"\xff\xfe", "Request body is not valid JSON:"),
])
def test_bad_json_is_a_400_naming_the_problem(body, message):
    status, error = run(error_response(refusal(lambda: parse_json(body))))
    assert status == 400
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"7", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(body):
    status, error = run(error_response(refusal(lambda: parse_json_object(body))))
    assert (status, error["code"], error["message"]) == (400, "invalid_json", "Request body must be a JSON object.")


def test_parse_json_keeps_other_values_and_empty_is_none():
    assert parse_json(b"[1, 2]") == [1, 2] and parse_json(b"") is None
    assert parse_json_object(b'{"model": "chat"}') == {"model": "chat"}


def test_a_replayed_body_reaches_the_app_once_then_the_client_is_heard_again():
    client = Client()  # the body was read already; next the client disconnects
    replayed = replay_body(b'{"model": "chat"}', client.receive)
    assert run(replayed()) == {"type": "http.request", "body": b'{"model": "chat"}', "more_body": False}
    assert run(replayed()) == {"type": "http.disconnect"}


def test_a_rewritten_body_reaches_a_real_app_with_a_matching_content_length():
    original = http_scope([(b"Content-Length", b"2"), (b"content-type", b"application/json")])
    scope, receive = with_body(original, Client().receive, b'{"model": "chat-v2"}')
    assert original["headers"] == [(b"Content-Length", b"2"), (b"content-type", b"application/json")]  # unchanged

    async def app_reads():
        request = Request(scope, receive)
        return request.headers["content-length"], await request.body()

    declared, body = run(app_reads())
    assert body == b'{"model": "chat-v2"}' and int(declared) == len(body)
    assert [k for k, _ in scope["headers"] if k.lower() == b"content-length"] == [b"content-length"]
    assert with_content_length(http_scope(), 5)["headers"] == [(b"content-length", b"5")]


# Response side


def stream(*chunks: bytes):
    async def events():
        for chunk in chunks:
            yield chunk

    return StreamingResponse(events(), media_type="text/event-stream")


class WatchingRecorder(Recorder):
    """Notes how many body chunks had reached the client each time the app produced one."""

    def __init__(self):
        super().__init__()
        self.bodies_seen = []

    def watch(self, send):
        async def watched(message):
            await send(message)
            if message["type"] == "http.response.body":
                self.bodies_seen.append(sum(m["type"] == "http.response.body" for m in self.messages))

        return watched


def test_header_edits_touch_the_start_only_and_a_stream_passes_chunk_by_chunk():
    sent = WatchingRecorder()
    edited = with_response_headers(sent.send, lambda headers: [*headers, (b"x-llm-serving-variant", b"chat-v2")])
    run(stream(b"data: 1\n\n", b"data: 2\n\n")(http_scope(), still_connected, sent.watch(edited)))
    assert sent.headers()[b"x-llm-serving-variant"] == b"chat-v2"
    assert sent.body == b"data: 1\n\ndata: 2\n\n"
    assert sent.bodies_seen == sorted(sent.bodies_seen) and sent.bodies_seen[0] == 1  # nothing held back


def test_a_picked_response_is_rewritten_whole_with_its_new_length():
    sent = Recorder()
    starts = []

    def add_alias(start, body):
        starts.append(start["status"])
        listing = json.loads(body)
        return json.dumps({**listing, "data": [*listing["data"], {"id": "chat"}]}).encode()

    rewriting = rewrite_response_body(sent.send, lambda start: start["status"] == 200, add_alias)
    response = JSONResponse({"object": "list", "data": [{"id": "chat-v1"}]}, headers={"x-request-id": "r1"})
    run(response(http_scope(method="GET"), still_connected, rewriting))
    assert starts == [200]
    assert json.loads(sent.body)["data"] == [{"id": "chat-v1"}, {"id": "chat"}]
    headers = sent.headers()
    assert int(headers[b"content-length"]) == len(sent.body)
    assert headers[b"x-request-id"] == b"r1"  # the rest of the start is kept
    assert [k for k, _ in sent.start["headers"]].count(b"content-length") == 1


def test_a_picked_response_in_several_chunks_is_rewritten_once_complete():
    sent = Recorder()
    rewriting = rewrite_response_body(sent.send, lambda start: True, lambda start, body: body.upper())

    async def app_in_chunks(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"6")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        assert sent.messages == []  # the start waits for the whole body: its length may change
        await send({"type": "http.response.body", "body": b"def"})

    run(app_in_chunks(http_scope(), still_connected, rewriting))
    assert sent.body == b"ABCDEF" and sent.headers()[b"content-length"] == b"6"


@pytest.mark.parametrize("response", [
    lambda: JSONResponse({"error": "nope"}, status_code=404),
    lambda: PlainTextResponse("plain"),
    lambda: stream(b"data: 1\n\n", b"data: 2\n\n"),
], ids=["not-picked-status", "not-picked-type", "stream"])
def test_responses_not_picked_pass_through_as_they_come(response):
    sent = WatchingRecorder()

    def picked(start):
        return start["status"] == 200 and dict(start["headers"]).get(b"content-type") == b"application/json"

    def must_not_run(start, body):
        raise AssertionError("rewrote a response that was not picked")

    rewriting = rewrite_response_body(sent.send, picked, must_not_run)
    reference = Recorder()
    run(response()(http_scope(), still_connected, reference.send))
    run(response()(http_scope(), still_connected, sent.watch(rewriting)))
    assert sent.messages == reference.messages
    assert sent.bodies_seen == list(range(1, len(sent.bodies_seen) + 1))  # each chunk out before the next
