"""The Batch API's HTTP layer (llm_serving.batch.routes) on a local store: uploads and their
limits, ownership (another key's objects are 404), creation checks, pagination and the route table
shared with the metrics' labels. The runner here only records what the layer asks of it; the
e2e tests (tests/e2e/test_batch_api.py) run real batches."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette

from llm_serving.batch.endpoints import match_batch_endpoint
from llm_serving.batch.routes import BatchRoutes
from llm_serving.config import BatchConfig
from llm_serving.gateway.api_keys import ApiKey
from llm_serving.gateway.metrics import route_label
from llm_serving.gateway.middleware import API_KEY_SCOPE

LINE = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}


class RecordingRunner:
    """Stands in for the BatchRunner's deployment handle: `.submit.remote(id)` is awaited."""

    def __init__(self):
        self.submitted = []
        runner = self

        class _Submit:
            async def remote(self, batch_id):
                runner.submitted.append(batch_id)

        self.submit = _Submit()


class WithKey:
    """Puts an ApiKey into the scope, as the gateway's auth does, from the test's header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        name = dict(scope["headers"]).get(b"x-key", b"team-a").decode()
        scope[API_KEY_SCOPE] = ApiKey(name=name, digest=b"", allowed_models=None)
        await self.app(scope, receive, send)


@pytest.fixture
def api(tmp_path):
    runner = RecordingRunner()
    config = BatchConfig(store_uri=str(tmp_path / "store"), max_file_bytes=2048, max_lines=3, completion_window_s=600)
    app = WithKey(BatchRoutes(Starlette(), config, runner))

    def call(method, path, key="team-a", **kwargs):
        async def go():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://batch") as client:
                return await client.request(method, path, headers={"x-key": key}, **kwargs)

        return asyncio.run(go())

    call.runner = runner
    return call


def upload(api, lines=(LINE,), key="team-a", purpose="batch"):
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    return api("POST", "/v1/files", key=key, data={"purpose": purpose}, files={"file": ("in.jsonl", data)})


@pytest.mark.parametrize("path, template", [
    ("/v1/files", "/v1/files"),
    ("/v1/files/file-1", "/v1/files/{id}"),
    ("/v1/files/file-1/content", "/v1/files/{id}/content"),
    ("/v1/batches", "/v1/batches"),
    ("/v1/batches/batch_1", "/v1/batches/{id}"),
    ("/v1/batches/batch_1/cancel", "/v1/batches/{id}/cancel"),
])
def test_one_route_table_names_the_handler_and_the_metrics_label(path, template):
    assert match_batch_endpoint(path)[0].template == template
    assert route_label(path) == template


def test_an_upload_is_a_file_its_owner_reads_and_others_never_see(api):
    created = upload(api)
    assert created.status_code == 200, created.text
    file = created.json()
    assert file["object"] == "file" and file["purpose"] == "batch" and "owner" not in file
    assert api("GET", f"/v1/files/{file['id']}/content").content == json.dumps(LINE).encode() + b"\n"
    for method, path in [("GET", f"/v1/files/{file['id']}"), ("GET", f"/v1/files/{file['id']}/content"),
                         ("DELETE", f"/v1/files/{file['id']}")]:
        refused = api(method, path, key="team-b")
        assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found_error"
    assert api("GET", "/v1/files", key="team-b").json()["data"] == []
    assert api("DELETE", f"/v1/files/{file['id']}").json() == {"id": file["id"], "object": "file", "deleted": True}
    assert api("GET", f"/v1/files/{file['id']}").status_code == 404


@pytest.mark.parametrize("lines, purpose, status, code", [
    ((LINE,) * 4, "batch", 400, "too_many_lines"),
    ((LINE,), "fine-tune", 400, "invalid_value"),
    (({"input": "x" * 3000},), "batch", 413, "request_too_large"),
])
def test_uploads_over_the_limits_or_of_another_purpose_are_refused(api, lines, purpose, status, code):
    refused = upload(api, lines, purpose=purpose)
    assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)


def test_a_batch_is_recorded_then_handed_to_the_runner(api):
    file_id = upload(api).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    created = api("POST", "/v1/batches", json=body)
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["status"] == "validating" and batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    # The API's window is "24h"; the server's shorter batch.completion_window_s sets expires_at.
    assert batch["completion_window"] == "24h" and batch["expires_at"] == batch["created_at"] + 600
    assert api.runner.submitted == [batch["id"]]
    assert api("GET", f"/v1/batches/{batch['id']}").json()["id"] == batch["id"]
    assert api("GET", f"/v1/batches/{batch['id']}", key="team-b").status_code == 404
    assert api("POST", f"/v1/batches/{batch['id']}/cancel", key="team-b").status_code == 404
    # Another key cannot start a batch on this key's file either.
    assert api("POST", "/v1/batches", key="team-b", json=body).status_code == 404


@pytest.mark.parametrize("change, param", [
    ({"endpoint": "/v1/moderations"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"input_file_id": None}, "input_file_id"),
])
def test_bad_batch_requests_get_400_naming_the_field(api, change, param):
    file_id = upload(api).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h", **change}
    refused = api("POST", "/v1/batches", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert api.runner.submitted == []


def test_batches_are_listed_newest_first_a_page_at_a_time(api):
    file_id = upload(api).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    ids = [api("POST", "/v1/batches", json=body).json()["id"] for _ in range(3)]
    order = [b["id"] for b in api("GET", "/v1/batches").json()["data"]]
    assert order == ids[::-1]  # newest first, also within one second
    first = api("GET", "/v1/batches?limit=2").json()
    assert [b["id"] for b in first["data"]] == order[:2] and first["has_more"] and first["last_id"] == order[1]
    rest = api("GET", f"/v1/batches?limit=2&after={first['last_id']}").json()
    assert [b["id"] for b in rest["data"]] == order[2:] and not rest["has_more"]
    assert api("GET", "/v1/batches?limit=0").status_code == 400


def test_a_method_the_route_does_not_take_is_405(api):
    assert api("PUT", "/v1/batches").status_code == 405
