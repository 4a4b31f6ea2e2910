"""Locally, every listener of the process tree on the address the command serves on.

An unauthenticated Ray cluster reachable from the network runs anyone's code, so `llm-serving
serve` (default `--host 127.0.0.1`) keeps Ray to the loopback. Ray 2.60 has no one switch for it:

- Ray's own servers (GCS, raylet, object manager, workers' gRPC, dashboard and its agent, runtime
  env agent, metrics) bind to the node's IP, and the node's IP is the loopback when Ray's
  multi-node mode is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when `ray` is imported; its
  name is historic, it is the switch on Linux too: ray/_private/services.py get_node_ip_address).
- Serve replicas' inter-deployment gRPC server binds `[::]:0` in Ray's code
  (ray/serve/_private/replica.py); a worker setup hook rewrites that address in each worker.
- Serve's HAProxy config binds its stats (`*:8404`) and Prometheus (`:9101`) listeners to every
  interface (ray/serve/_private/haproxy_templates.py); only its HTTP frontend follows Serve's host.
  Ray lets the binary be replaced (RAY_SERVE_HAPROXY_BINARY_PATH): a small script runs this
  module, which rewrites the wildcard binds of the config HAProxy is given and execs the real
  HAProxy in the same process, so Ray's process handle, reloads (`-sf`) and admin socket work as
  before:

    python -m llm_serving.local_binding HOST REAL_HAPROXY [haproxy arguments...]

None of this is used on a cluster, where pods must be reachable by each other.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Any, List

RAY_LOOPBACK_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SETUP_HOOK = "llm_serving.local_binding.bind_serve_replicas_to_loopback"
# `bind *:8404`, `bind :9101`, `bind 0.0.0.0:...`, `bind :::...`: a listener on every interface.
WILDCARD_BIND = re.compile(r"^(?P<lead>\s*bind\s+)(?:\*|0\.0\.0\.0|::)?:(?P<port>\d+)", re.MULTILINE)
LOOPBACK_HOSTS = {"localhost", "::1"}


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def bind_serve_replicas_to_loopback() -> None:
    """A worker_process_setup_hook: Serve replicas' inter-deployment gRPC server on the loopback."""
    from llm_serving._ray import serve_replica as replica  # Ray 2.60 hard-codes "[::]:0" in it

    bind_any_interface = replica.add_port_to_grpc_server

    def bind_loopback(server: Any, address: str) -> int:  # a gRPC server; returns the port it bound
        return bind_any_interface(server, address.replace("[::]", "127.0.0.1"))

    replica.add_port_to_grpc_server = bind_loopback


def bind_to(config: str, host: str) -> str:
    """The config with every wildcard listener bound to `host` instead."""
    return WILDCARD_BIND.sub(lambda m: f"{m.group('lead')}{host}:{m.group('port')}", config)


def rewritten_arguments(arguments: List[str], host: str) -> List[str]:
    """HAProxy's arguments with each `-f CONFIG` replaced by a copy of CONFIG bound to `host`."""
    result = list(arguments)
    for index, argument in enumerate(arguments[:-1]):
        if argument == "-f":
            original = Path(arguments[index + 1])
            bound = original.with_name(f"{original.stem}.local{original.suffix}")
            bound.write_text(bind_to(original.read_text(), host))
            result[index + 1] = str(bound)
    return result


def write_launcher(directory: Path, host: str, real_haproxy: str) -> Path:
    """An executable for RAY_SERVE_HAPROXY_BINARY_PATH that runs this module with `host`."""
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / "haproxy"
    command = shlex.join([sys.executable, "-m", "llm_serving.local_binding", host, real_haproxy])
    launcher.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


def main(argv: List[str]) -> None:
    host, real_haproxy, *arguments = argv
    os.execv(real_haproxy, [real_haproxy, *rewritten_arguments(arguments, host)])


if __name__ == "__main__":
    main(sys.argv[1:])
