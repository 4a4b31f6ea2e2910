"""The gateway's per-model readiness from Serve's instance details: what tells a model scaled to zero (the
request wakes it; Serve's router holds it) from one whose running replica died (requests waiting on
it are given up with 503 + Retry-After, issue 14 case 1)."""

from __future__ import annotations

import pytest
from ray.serve.schema import DeploymentStatus, ReplicaState

from llm_serving.ingress import readiness_from_details

DEPLOYMENTS = {"chat": ("llm-serving", "LLMServer:chat")}


def details(deployment_status: str, running: int, starting: int = 0) -> dict:
    """The fields of the controller's instance details (get_serve_details()) that readiness reads,
    with the enum values the controller sends."""
    replicas = [{"replica_id": f"r{i}", "state": ReplicaState.RUNNING} for i in range(running)]
    replicas += [{"replica_id": f"s{i}", "state": ReplicaState.STARTING} for i in range(starting)]
    deployment = {"name": "LLMServer:chat", "status": DeploymentStatus(deployment_status), "replicas": replicas}
    return {"applications": {"llm-serving": {"deployments": {"LLMServer:chat": deployment}}}}


@pytest.mark.parametrize(
    "deployment_status, running, starting, expected",
    [
        ("HEALTHY", 2, 0, (True, 2)),
        ("HEALTHY", 0, 0, (True, 0)),  # scaled to zero: ready, no running replica -> a waking request waits
        ("UPSCALING", 0, 1, (False, 0)),  # starting (or replacing a dead replica): not ready
        ("UNHEALTHY", 1, 1, (True, 1)),  # one of two died, one still runs, its replacement starts
    ],
)
def test_ready_and_running_replicas(deployment_status, running, starting, expected):
    assert readiness_from_details(details(deployment_status, running, starting), DEPLOYMENTS) == {"chat": expected}


@pytest.mark.parametrize("instance", [{}, {"applications": {}}, {"applications": {"llm-serving": {"deployments": {}}}}])
def test_a_model_missing_from_serve_is_not_ready(instance):
    assert readiness_from_details(instance, DEPLOYMENTS) == {"chat": (False, 0)}
