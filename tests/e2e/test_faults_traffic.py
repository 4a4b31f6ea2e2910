"""Fault battery cases 4-7 (tests/faults/traffic.py) as e2e tests, on one module-scoped instance:
client disconnects, overload, the limits store (Redis) down, slow and broken clients.

Each test runs one case and asserts its bounds; a failure prints the case's table row. All four
run here: the module took 176 s on two cores with the instance's start-up (389 s with the machine
shared under a load average near 20); `make faults` runs the same cases with the rest of the battery.
"""

from __future__ import annotations

import pytest

from tests.faults import traffic
from tests.faults.report import table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    running = traffic.start_instance(tmp_path_factory.mktemp("faults-traffic"))
    yield running
    traffic.stop_instance(running)


def test_client_disconnects_abort_engine_requests_and_free_slots(instance):
    result = traffic.case_disconnects(instance)
    assert result.ok, table([result])


def test_overload_is_refused_fast_with_retry_after(instance):
    result = traffic.case_overload(instance)
    assert result.ok, table([result])


def test_limits_store_down_admits_uncounted_then_counts_again(instance):
    result = traffic.case_limits_store_down(instance)
    assert result.ok, table([result])


def test_slow_and_broken_clients_are_cut_by_timeouts(instance):
    result = traffic.case_slow_clients(instance)
    assert result.ok, table([result])
