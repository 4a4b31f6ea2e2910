"""The gateway's per-model readiness from Serve's instance details: what tells a model scaled to zero (the
request wakes it; Serve's router holds it) from one whose running replica died (requests waiting on
it are given up with 503 + Retry-After, issue 14 case 1)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from types import SimpleNamespace

import pytest
from ray.serve.schema import DeploymentStatus, ReplicaState

from llm_serving import ingress
from llm_serving.gateway.stream_failures import EngineUnavailable
from llm_serving.ingress import ModelReadiness, readiness_from_details

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


# What a request waiting for its engine's first response does (ingress._first_while_ready), with
# the readiness the background poll would have read.


def waiting_ingress(monkeypatch, ready: bool, running: int):
    monkeypatch.setattr(ingress, "FIRST_RESPONSE_READINESS_CHECK_S", 0.02)
    monkeypatch.setattr(ingress, "FIRST_RESPONSE_SLOW_LOG_S", 0.15)
    readiness = ModelReadiness({"chat": SimpleNamespace(app_name="llm-serving", deployment_name="LLMServer:chat")})
    readiness._ready, readiness._running = {"chat": ready}, {"chat": running}
    gateway = object.__new__(ingress._GatewayOpenAiIngress)  # only its readiness is used here
    gateway._readiness = readiness
    return gateway, readiness


async def first_response_after(seconds: float):
    await asyncio.sleep(seconds)
    yield "first"


def test_a_request_whose_replica_died_before_its_first_response_gets_503(monkeypatch):
    gateway, readiness = waiting_ingress(monkeypatch, ready=True, running=1)

    async def scenario():
        waiting = asyncio.ensure_future(gateway._first_while_ready(first_response_after(60).__aiter__(), "chat"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        readiness._ready, readiness._running = {"chat": False}, {"chat": 0}  # the poll saw the replica gone
        with pytest.raises(EngineUnavailable):
            await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_a_request_waking_a_model_scaled_to_zero_waits_for_the_replica(monkeypatch):
    gateway, readiness = waiting_ingress(monkeypatch, ready=True, running=0)

    async def scenario():
        waiting = asyncio.ensure_future(gateway._first_while_ready(first_response_after(0.3).__aiter__(), "chat"))
        await asyncio.sleep(0.05)
        readiness._ready = {"chat": False}  # the woken deployment is starting its replica
        assert await asyncio.wait_for(waiting, 2) == "first"

    asyncio.run(scenario())


def test_a_long_wait_for_the_first_response_is_logged_once_with_what_the_gateway_knew(monkeypatch, caplog):
    gateway, readiness = waiting_ingress(monkeypatch, ready=True, running=1)
    readiness.polled_at = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=ingress.__name__):
        first = asyncio.run(gateway._first_while_ready(first_response_after(0.5).__aiter__(), "chat"))
    assert first == "first"
    (record,) = [r for r in caplog.records if "first response" in r.getMessage()]
    assert "model chat" in record.getMessage() and "model ready True, 1 running replicas" in record.getMessage()
    assert "with replicas as it came" in record.getMessage()
    assert re.search(r"Serve's view read \d+\.\d s ago", record.getMessage()), record.getMessage()
