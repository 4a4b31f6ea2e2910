"""The BatchRunner's pure parts (llm_serving.batch.runner): the bound on batch rows per engine, and
how a row of Ray Data's Serve deployment processor becomes an output or error line. Running real
batches is the e2e tests' (tests/e2e/test_batch_api.py)."""

import json

import numpy as np
import pytest

from llm_serving.batch.runner import _result_of_row, rows_in_flight


@pytest.mark.parametrize("share, slots, replicas, expected", [
    (0.25, 64, 1, 16), (0.25, 64, 2, 32), (0.01, 10, 1, 1), (1.0, 8, 0, 8),
])
def test_batch_rows_hold_at_most_their_share_of_the_engines_slots(share, slots, replicas, expected):
    assert rows_in_flight(share, slots, replicas) == expected


def line_of(row):
    return json.loads(_result_of_row(row)["result"])


def test_an_answered_row_is_an_output_line_with_the_engines_body():
    row = {"custom_id": "a", "body": "{}", "method": "chat", "request_id": "0", "time_taken": 0.1,
           "batch_uuid": "u", "__inference_error__": "", "id": "chatcmpl-1", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
           "usage": {"prompt_tokens": 3}}
    line = line_of(row)
    assert line["custom_id"] == "a" and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"] == "chatcmpl-1"
    assert line["response"]["body"] == {"id": "chatcmpl-1", "object": "chat.completion", "usage": {"prompt_tokens": 3},
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}


def test_arrow_arrays_in_a_row_become_json_lists():
    row = {"custom_id": "e", "__inference_error__": "", "data": [{"embedding": np.array([0.5, 0.25])}]}
    assert line_of(row)["response"]["body"]["data"] == [{"embedding": [0.5, 0.25]}]


def test_an_engine_refusal_is_an_error_line_with_its_status():
    row = {"custom_id": "b", "__inference_error__": "",
           "error": {"message": "too long", "type": "BadRequestError", "code": 400}}
    line = line_of(row)
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "too long"


def test_a_failed_call_is_an_error_line_naming_the_failure():
    line = line_of({"custom_id": "c", "__inference_error__": "TimeoutError: Request timed out after 600s"})
    assert line["response"]["status_code"] == 500 and "timed out" in line["response"]["body"]["error"]["message"]
