"""The Batch API's formats and input validation (llm_serving.batch.formats): OpenAI's object shapes
and every way an input file fails a batch before a line runs."""

import json

import pytest
from openai.types import Batch, FileObject

from llm_serving.batch.formats import (
    batch_object,
    check_metadata,
    failed_line,
    file_object,
    output_line,
    parse_input_file,
    public,
    set_status,
)

CHAT = "/v1/chat/completions"
MODELS = ["tiny-chat", "other-chat"]


def line(custom_id="a", url=CHAT, method="POST", **body):
    return {"custom_id": custom_id, "method": method, "url": url, "body": {"model": "tiny-chat", **body}}


def content(*lines):
    return b"\n".join(json.dumps(item).encode() if isinstance(item, dict) else item for item in lines)


def test_the_objects_parse_as_the_openai_clients_types():
    file = public(file_object("file-1", 12, "in.jsonl", "batch", owner="team-a"))
    assert FileObject.model_validate(file).purpose == "batch" and "owner" not in file
    batch = batch_object("batch_1", CHAT, "file-1", "team-a", ["tiny-chat"], {"k": "v"})
    set_status(batch, "in_progress")
    parsed = Batch.model_validate(public(batch))
    assert parsed.status == "in_progress" and parsed.in_progress_at and parsed.expires_at == batch["created_at"] + 86400
    assert "allowed_models" not in public(batch)


def test_output_and_error_lines_have_openais_shape():
    ok = output_line("x", 200, {"object": "chat.completion"})
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"]
    bad = failed_line("y", 403, "no", "model_not_allowed", "model")
    assert bad["response"]["body"]["error"] == {
        "message": "no", "type": "permission_error", "param": "model", "code": "model_not_allowed"
    }


def test_a_valid_file_gives_its_lines_with_the_model_filled_in():
    body_without_model = {"custom_id": "b", "method": "POST", "url": CHAT, "body": {"messages": []}}
    parsed = parse_input_file(content(line("a"), b"", body_without_model), CHAT, ["tiny-chat"], 10)
    assert parsed.errors == []
    assert [(x.line, x.custom_id, x.model) for x in parsed.lines] == [(1, "a", "tiny-chat"), (3, "b", "tiny-chat")]


@pytest.mark.parametrize("bad, code, param", [
    (b"{not json", "invalid_json_line", None),
    (b"[1, 2]", "invalid_json_line", None),
    (json.dumps({"method": "POST", "url": CHAT, "body": {}}).encode(), "missing_required_parameter", "custom_id"),
    (line("z", method="GET"), "invalid_method", "method"),
    (line("z", url="/v1/embeddings"), "mismatched_endpoint", "url"),
    (line("z", model="gpt-9"), "model_not_found", "body.model"),
    ({"custom_id": "z", "method": "POST", "url": CHAT, "body": "text"}, "invalid_request", "body"),
])
def test_each_bad_line_fails_the_batch_naming_its_line(bad, code, param):
    parsed = parse_input_file(content(line("a"), bad), CHAT, MODELS, 10)
    assert [(e["code"], e["line"], e["param"]) for e in parsed.errors] == [(code, 2, param)]


def test_a_repeated_custom_id_names_both_lines():
    parsed = parse_input_file(content(line("a"), line("b"), line("a")), CHAT, MODELS, 10)
    (error,) = parsed.errors
    assert (error["code"], error["line"]) == ("duplicate_custom_id", 3) and "line 1" in error["message"]


def test_a_model_is_required_when_several_are_served():
    no_model = {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"messages": []}}
    assert parse_input_file(content(no_model), CHAT, MODELS, 10).errors[0]["code"] == "model_not_found"


@pytest.mark.parametrize("data, code", [(b"", "empty_file"), (b"\xff\xfe", "invalid_file_format")])
def test_empty_or_binary_files_fail(data, code):
    assert parse_input_file(data, CHAT, MODELS, 10).errors[0]["code"] == code


def test_more_lines_than_the_limit_fail_the_batch():
    parsed = parse_input_file(content(*(line(str(i)) for i in range(4))), CHAT, MODELS, 3)
    assert parsed.errors[0]["code"] == "too_many_requests" and parsed.lines == []


@pytest.mark.parametrize("metadata, ok", [
    (None, True), ({"a": "b"}, True), ({str(i): "v" for i in range(17)}, False), ({"k": 1}, False),
    ({"k" * 65: "v"}, False), ({"k": "v" * 513}, False), ("text", False),
])
def test_metadata_follows_openais_limits(metadata, ok):
    assert (check_metadata(metadata) is None) == ok
