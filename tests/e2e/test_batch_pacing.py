"""batch.max_rows_per_s: a batch's rows start no faster than the bound. An instance of its own
(dev-cpu's chat model, the Batch API with max_rows_per_s RATE and an engine_share that makes blocks
of BLOCK rows), since the bound is fixed when the app is built."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.dev_cpu import FULL_KEY, chat_model_app
from tests.e2e.test_batch_api import (
    chat_body,
    line,
    read_lines,
    upload,
    wait_until_done,
)

pytestmark = pytest.mark.e2e

RATE = 2.0  # rows per second
BLOCK = 4  # rows sent together: engine_share 1/16 of tiny-chat's 64 slots
LINES = 24
# Rows are made 1/RATE apart and a block goes out with its last row, so the engine starts the last
# block (LINES - BLOCK) / RATE = 10 s after the first (11 s measured); unbounded, 4 s.
SPREAD_AT_LEAST_S = 0.7 * (LINES - BLOCK) / RATE


def paced_batches(args: dict) -> None:
    args["batch"].update(max_rows_per_s=RATE, engine_share=BLOCK / 64)


@pytest.fixture(scope="module")
def paced(tmp_path_factory):
    with chat_model_app(tmp_path_factory.mktemp("paced"), paced_batches) as app:
        yield app


def test_rows_start_no_faster_than_max_rows_per_s(paced):
    client = openai.OpenAI(base_url=paced.api_url, api_key=FULL_KEY, max_retries=2)
    lines = [line(f"row-{i}", "/v1/chat/completions", chat_body(i, max_tokens=4)) for i in range(LINES)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_until_done(client, batch.id)
    assert batch.status == "completed", batch
    answers = read_lines(client, batch.output_file_id)
    assert sorted(answers) == sorted(f"row-{i}" for i in range(LINES))
    # When the engine started each row: vLLM stamps `created` (whole seconds) as it takes a request.
    # Results reach the runner in bunches (Ray Data's postprocess tasks), so only the engine's
    # clock shows the pace.
    created = sorted(answer["response"]["body"]["created"] for answer in answers.values())
    spread = created[-1] - created[0] + 1  # whole seconds: the true spread is at most one more
    print(f"\nthe engine started {LINES} rows at {RATE} rows/s (blocks of {BLOCK}) over {spread} s")
    assert spread >= SPREAD_AT_LEAST_S, (
        f"the engine started {LINES} rows within {spread} s (by its `created` stamps {created}): faster "
        f"than {RATE} rows/s allows (at least {SPREAD_AT_LEAST_S:.1f} s)"
    )
