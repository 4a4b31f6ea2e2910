"""Start the real app with the real command (`llm-serving serve`) and wait until it is ready."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import httpx
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
LLM_SERVING = Path(sys.executable).parent / "llm-serving"
STARTUP_TIMEOUT_S = 900
STOP_BOUND_S = 30


# Ports handed out by free_port in this process: none twice.
_HANDED_OUT: set = set()


def free_port() -> int:
    """A port free on 127.0.0.1, below the kernel's ephemeral range. A port from that range (what
    binding port 0 gives) can be taken before the app binds it by an outgoing connection's local
    port, and Ray opens hundreds: HAProxy once failed to start with "cannot bind socket (Address
    already in use)" for the port a test had picked seconds before."""
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_low = int(range_file.read_text().split()[0]) if range_file.exists() else 0
    candidates = range(max(1024, ephemeral_low - 12000), ephemeral_low)
    for _ in range(500):
        port = random.choice(candidates) if candidates else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use (a listener, or a connection in TIME_WAIT)
                continue
            port = sock.getsockname()[1]
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found in {candidates}")


def per_instance_ports() -> Dict[str, str]:
    """Ray's HAProxy binds fixed stats and metrics ports by default, and Serve's own proxy behind it
    a fixed fallback port (8500, with SO_REUSEPORT: two instances would share it); free ones let
    two instances (a test's and a developer's, or two tests') run side by side on one machine."""
    return {
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
    }


@dataclass
class StartupObservation:
    """A response seen while the app was starting (status, headers, body)."""

    status: int
    headers: Dict[str, str]
    body: str


@dataclass
class StopReport:
    """How `llm-serving serve` stopped: what a person would check with ps and ss afterwards."""

    way: str
    exit_code: int
    seconds: float
    processes_left: List[str]  # of the command's process tree as it was just before the signal
    listeners_left: List[str]  # addresses that processes of that tree still listen on

    @property
    def clean(self) -> bool:
        # The bound catches a stop that hangs (it took 39 s before the supervisor); a few seconds is usual.
        return (self.exit_code == 0 and not self.processes_left and not self.listeners_left
                and self.seconds < STOP_BOUND_S)

    def __str__(self) -> str:
        return (f"{self.way}: exit code {self.exit_code} after {self.seconds:.1f} s; processes left: "
                f"{self.processes_left or 'none'}; listeners left: {self.listeners_left or 'none'}")


def process_tree(pid: int) -> List[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def thread_niceness(process: psutil.Process) -> set:
    """The nice values of a process's threads (Linux keeps one per thread)."""
    values = set()
    for thread in process.threads():
        try:
            values.add(psutil.Process(thread.id).nice())
        except psutil.Error:  # the thread ended meanwhile
            continue
    return values


# Process titles of Ray Data's batch workers: the map actor that sends rows to the engines, and the
# postprocess tasks.
BATCH_WORKER_TITLES = ("ray::MapWorker(", "ray::Map(_postprocess)")


def listeners(processes: List[psutil.Process]) -> Dict[Tuple[str, int], str]:
    """{(ip, port): "name[pid]"} of the TCP sockets the processes listen on."""
    names = {}
    for process in processes:
        try:
            names[process.pid] = f"{process.name()}[{process.pid}]"
        except psutil.NoSuchProcess:
            pass
    return {
        (connection.laddr.ip, connection.laddr.port): names[connection.pid]
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.pid in names
    }


@dataclass
class RunningApp:
    base_url: str
    metrics_url: str
    process: subprocess.Popen
    log_path: Path  # what the command prints: its progress lines
    ray_log_path: Path  # Ray's and vLLM's logs (--log-file)
    startup: List[StartupObservation] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def log_tail(self, lines: int = 80) -> str:
        tails = []
        for path in (self.ray_log_path, self.log_path):
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            tails.append(f"--- {path.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(tails)

    def stop(self, signum: int = signal.SIGINT, to_group: bool = False) -> StopReport:
        """Stop it as a person or a supervisor would: `signum` to the command, or to its whole
        process group (as `timeout`, systemd and container runtimes do), then look for leftovers."""
        way = f"{signal.Signals(signum).name} to the {'process group' if to_group else 'command'}"
        if self.process.poll() is not None:
            return StopReport(way, self.process.returncode, 0.0, [], [])
        tree = process_tree(self.process.pid)
        identities = set()  # (pid, start time): a pid alone may be reused by then
        for process in tree[1:]:
            try:
                identities.add((process.pid, process.create_time()))
            except psutil.NoSuchProcess:
                pass
        started = time.monotonic()
        if to_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        seconds = time.monotonic() - started
        survivors = [p for p in psutil.process_iter(["name", "create_time"])
                     if (p.pid, p.info["create_time"]) in identities]
        return StopReport(way, self.process.returncode, seconds,
                          [f"{p.info['name']}[{p.pid}]" for p in survivors],
                          [f"{ip}:{port} ({owner})" for (ip, port), owner in listeners(survivors).items()])


def start_app(config_path: Path, log_path: Path, probe_request: Optional[dict] = None,
              probe_headers: Optional[dict] = None, env: Optional[dict] = None) -> RunningApp:
    """Run `llm-serving serve CONFIG` and return once it prints that it is ready.

    While it starts, `probe_request` (a JSON body for /v1/chat/completions) is sent every half
    second and each answer is kept, so tests can check what clients see before models are ready.
    """
    port, metrics_port = free_port(), free_port()
    log = log_path.open("w")
    ray_log_path = log_path.with_name(f"{log_path.stem}-ray.log")
    process = subprocess.Popen(
        [str(LLM_SERVING), "serve", str(config_path), "--port", str(port), "--metrics-port", str(metrics_port),
         "--log-file", str(ray_log_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **per_instance_ports(), **(env or {})},
        start_new_session=True,  # our own process group: a hard kill takes Ray's children too
    )
    app = RunningApp(
        base_url=f"http://127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        process=process,
        log_path=log_path,
        ray_log_path=ray_log_path,
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
def served(work: Path, args: dict) -> Iterator[RunningApp]:
    """`llm-serving serve` on `args` (written to work/app.yaml), stopped at the end with SIGTERM to
    its process group (as `timeout`, systemd and container runtimes do), which must leave nothing
    behind."""
    config_file = work / "app.yaml"
    config_file.write_text(yaml.safe_dump(args))
    app = start_app(config_file, work / "serve.log")
    yield app
    stopped = app.stop(signal.SIGTERM, to_group=True)
    assert stopped.clean, f"llm-serving did not stop cleanly: {stopped}\n{app.log_tail()}"


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A real redis-server (ci/install-tools.sh installs it) on a free loopback port; yields its URL."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run ci/install-tools.sh"
    port = free_port()
    process = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
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


def engine_requests_running(app: RunningApp, model: str) -> float:
    """vLLM's running-requests gauge for `model`; 0 when the scrape has none. Ray 2.60 evicts a gauge
    that was not reported again within two export intervals (ray/_private/telemetry/
    open_telemetry_metric_recorder.py), and vLLM reports it only while its engine works: seconds
    after start-up or after its last request, the series is gone (seen here: present, then absent
    for minutes while idle), while the counters stay."""
    return total(scrape(app), "ray_vllm_num_requests_running", model_name=model)
