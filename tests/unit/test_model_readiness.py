"""The gateway's per-model readiness from Serve's status: what tells a model scaled to zero (the
request wakes it; Serve's router holds it) from one whose running replica died (requests waiting on
it are given up with 503 + Retry-After, issue 14 case 1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llm_serving.ingress import readiness_from_status

DEPLOYMENTS = {"chat": ("llm-serving", "LLMServer:chat")}


def status(deployment_status: str, running: int) -> SimpleNamespace:
    """The two fields of Serve's status (serve.status()) that readiness reads."""
    deployment = SimpleNamespace(status=deployment_status, replica_states={"RUNNING": running} if running else {})
    application = SimpleNamespace(deployments={"LLMServer:chat": deployment})
    return SimpleNamespace(applications={"llm-serving": application})


@pytest.mark.parametrize(
    "deployment_status, running, expected",
    [
        ("HEALTHY", 2, (True, 2)),
        ("HEALTHY", 0, (True, 0)),  # scaled to zero: ready, no running replica -> a waking request waits
        ("UPSCALING", 0, (False, 0)),  # starting (or replacing a dead replica): not ready
        ("UNHEALTHY", 1, (True, 1)),  # one of two died, one still runs
    ],
)
def test_ready_and_running_replicas(deployment_status, running, expected):
    assert readiness_from_status(status(deployment_status, running), DEPLOYMENTS) == {"chat": expected}


def test_a_model_missing_from_serve_is_not_ready():
    assert readiness_from_status(SimpleNamespace(applications={}), DEPLOYMENTS) == {"chat": (False, 0)}
