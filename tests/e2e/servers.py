"""Start the real app with the real command (`llm-serving serve`) and wait until it is ready."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
LLM_SERVING = Path(sys.executable).parent / "llm-serving"
STARTUP_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def haproxy_ports() -> Dict[str, str]:
    """Ray's HAProxy binds fixed stats and metrics ports by default; free ones let two instances
    (a test's and a developer's, or two tests') run on one machine."""
    return {"RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}


@dataclass
class StartupObservation:
    """A response seen while the app was starting (status, headers, body)."""

    status: int
    headers: Dict[str, str]
    body: str


@dataclass
class RunningApp:
    base_url: str
    metrics_url: str
    process: subprocess.Popen
    log_path: Path
    startup: List[StartupObservation] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_app(config_path: Path, log_path: Path, probe_request: Optional[dict] = None,
              probe_headers: Optional[dict] = None, env: Optional[dict] = None) -> RunningApp:
    """Run `llm-serving serve CONFIG` and return once it prints that it is ready.

    While it starts, `probe_request` (a JSON body for /v1/chat/completions) is sent every half
    second and each answer is kept, so tests can check what clients see before models are ready.
    """
    port, metrics_port = free_port(), free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(LLM_SERVING), "serve", str(config_path), "--port", str(port), "--metrics-port", str(metrics_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **haproxy_ports(), **(env or {})},
        start_new_session=True,  # our own process group: a hard kill takes Ray's children too
    )
    app = RunningApp(
        base_url=f"http://127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        process=process,
        log_path=log_path,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=5) as client:
        while "ready at" not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"llm-serving exited with {process.returncode} while starting:\n{app.log_tail()}")
            if time.monotonic() > deadline:
                app.stop()
                raise RuntimeError(f"llm-serving was not ready after {STARTUP_TIMEOUT_S} s:\n{app.log_tail()}")
            if probe_request is not None:
                try:
                    response = client.post(f"{app.api_url}/chat/completions", json=probe_request,
                                           headers=probe_headers or {})
                    app.startup.append(StartupObservation(response.status_code, dict(response.headers), response.text))
                except httpx.HTTPError:
                    pass  # not listening yet
            time.sleep(0.5)
    return app


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A real redis-server (ci/install-tools.sh installs it) on a free port; yields its URL."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run ci/install-tools.sh"
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no",
                                "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def scrape(gateway) -> dict:
    """{(sample name, frozenset(labels)): value} of everything the endpoint exports."""
    samples = {}
    for family in text_string_to_metric_families(httpx.get(gateway.metrics_url, timeout=30).text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples, name, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)
