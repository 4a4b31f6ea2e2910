"""Fault battery cases 1-4 (issues 14 and 15) in `make test`: the engine replica's actor, one of two
gateway replicas and the GCS killed under a steady streaming load, and the Batch API's runner replica
killed mid-batch, on one instance with GCS fault tolerance
(see tests/faults/kills.py for the instance, the cases and their bounds). The EngineCore kill (case
1's second half) adds another engine restart and runs only in `make faults`.

The GCS case runs last: it leaves a gcs_server that the test started, which the fixture stops.
"""

from __future__ import annotations

import pytest

from tests.faults import kills
from tests.faults.report import table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with kills.instance(tmp_path_factory.mktemp("faults-kills")) as running:
        yield running


def test_a_killed_gateway_replica_fails_only_the_requests_it_held(instance):
    kills.ready(instance)
    result = kills.case_gateway_killed(instance)
    assert result.ok, table([result])


def test_a_killed_engine_replica_ends_its_streams_with_an_error_event_and_refuses_with_503_until_replaced(instance):
    kills.ready(instance)
    result = kills.case_engine_killed(instance, "replica actor")
    assert result.ok, table([result])


def test_a_batch_whose_runner_replica_is_killed_resumes_and_completes_each_line_once(instance):
    kills.ready(instance)
    result = kills.case_batch_runner_killed(instance)
    assert result.ok, table([result])


def test_a_killed_gcs_restarted_from_redis_fails_no_request_and_the_cluster_is_whole(instance):
    kills.ready(instance)
    result = kills.case_gcs_killed(instance)
    assert result.ok, table([result])
