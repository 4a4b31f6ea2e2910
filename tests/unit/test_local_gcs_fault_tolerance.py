"""`llm-serving serve` turns on GCS fault tolerance from the variables KubeRay sets on a head with
gcsFaultToleranceOptions (the e2e proof is tests/e2e/test_faults_kills.py)."""

from __future__ import annotations

import os

import pytest

from llm_serving import cli


class Said:
    def __init__(self):
        self.lines = []

    def say(self, line):
        self.lines.append(line)


@pytest.fixture
def environment(monkeypatch):
    for name in (cli.GCS_FT_REDIS_ADDRESS, cli.GCS_FT_REDIS_PASSWORD, cli.GCS_FT_NAMESPACE, cli.GCS_PORT):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_a_redis_address_nothing_changes(environment):
    console = Said()
    assert cli._gcs_fault_tolerance(console) is None
    assert console.lines == []
    assert cli.GCS_PORT not in os.environ and cli.GCS_FT_NAMESPACE not in os.environ


def test_with_a_redis_address_the_gcs_gets_a_fixed_port_a_namespace_of_its_own_and_the_password(environment):
    environment.setenv(cli.GCS_FT_REDIS_ADDRESS, "127.0.0.1:6379")
    environment.setenv(cli.GCS_FT_REDIS_PASSWORD, "s3cret")
    console = Said()
    assert cli._gcs_fault_tolerance(console) == "s3cret"
    port = int(os.environ[cli.GCS_PORT])  # a restarted gcs_server must listen where clients dial
    assert port > 0
    first_namespace = os.environ[cli.GCS_FT_NAMESPACE]
    assert first_namespace.startswith("llm-serving-")
    assert f"port {port}" in console.lines[0] and "127.0.0.1:6379" in console.lines[0]
    assert "s3cret" not in console.lines[0]


def test_settings_given_by_the_environment_are_kept(environment):
    environment.setenv(cli.GCS_FT_REDIS_ADDRESS, "redis:6379")
    environment.setenv(cli.GCS_FT_NAMESPACE, "cluster-uid")
    environment.setenv(cli.GCS_PORT, "6380")
    assert cli._gcs_fault_tolerance(Said()) is None  # no password set
    assert os.environ[cli.GCS_FT_NAMESPACE] == "cluster-uid" and os.environ[cli.GCS_PORT] == "6380"
