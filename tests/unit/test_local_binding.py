"""The local command's HAProxy listeners follow its --host: checked against the config template of
the installed Ray, so a Ray upgrade that adds or reshapes a listener fails here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from llm_serving._ray import HAPROXY_CONFIG_TEMPLATE
from llm_serving.local_binding import bind_to, is_loopback, rewritten_arguments, write_launcher

BIND_LINE = re.compile(r"^\s*bind\s+(?P<address>\S+)", re.MULTILINE)


def rays_bind_lines() -> list:
    """The bind lines of Ray's own HAProxy template, with its port expressions as numbers (the
    host expressions stay: those follow Serve's http_options.host)."""
    lines = [line.strip() for line in HAPROXY_CONFIG_TEMPLATE.splitlines() if BIND_LINE.match(line)]
    return [re.sub(r"\{\{[^}]*port[^}]*\}\}", "9999", line) for line in lines]


def test_rays_template_has_wildcard_listeners_and_they_all_move_to_the_host():
    lines = rays_bind_lines()
    assert any(line.startswith(("bind *:", "bind :")) for line in lines), lines  # what this works around
    bound = bind_to("\n".join(lines), "127.0.0.1")
    for line in bound.splitlines():  # Serve's HTTP and gRPC frontends bind its own host
        assert line.startswith("bind 127.0.0.1:") or line.startswith("bind {{ config.grpc_frontend_host }}:") \
            or line.startswith("bind {{ config.frontend_host }}:"), line


def test_a_given_address_is_left_alone():
    assert bind_to("  bind 10.0.0.5:8000\n  bind *:8404\n", "127.0.0.1") == "  bind 10.0.0.5:8000\n  bind 127.0.0.1:8404\n"


def test_only_the_config_argument_is_replaced(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text("listen stats\n  bind *:8404\n")
    arguments = rewritten_arguments(["-db", "-f", str(config), "-sf", "123"], "127.0.0.1")
    assert arguments[:2] == ["-db", "-f"] and arguments[3:] == ["-sf", "123"]
    assert Path(arguments[2]).read_text() == "listen stats\n  bind 127.0.0.1:8404\n"
    assert config.read_text() == "listen stats\n  bind *:8404\n"  # Ray's own file stays as Ray wrote it


def test_the_launcher_runs_the_real_binary_with_the_rewritten_config(tmp_path):
    fake_haproxy = tmp_path / "fake-haproxy"
    fake_haproxy.write_text("#!/bin/sh\nfor a in \"$@\"; do case $a in *.cfg) cat \"$a\";; esac; done\n")
    fake_haproxy.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend prometheus\n    bind :9101\n")
    launcher = write_launcher(tmp_path / "run", "127.0.0.1", str(fake_haproxy))
    result = subprocess.run([str(launcher), "-db", "-f", str(config)], capture_output=True, text=True, check=True)
    assert result.stdout == "frontend prometheus\n    bind 127.0.0.1:9101\n"


def test_loopback_hosts():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.0.2.2"))
