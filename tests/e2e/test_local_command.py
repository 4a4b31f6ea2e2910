"""`llm-serving serve` as a person sees it, on the shared instance: a few progress lines instead of
Ray's and vLLM's logs (those go to the file it names), and nothing of its process tree listening
beyond the loopback. How it stops (no process or port left, whichever way it is signalled) is
checked where each instance is stopped: SIGINT to the command (conftest), SIGTERM to the command
(test_rag), SIGTERM to the group (test_direct_streaming), SIGINT to the group (test_traffic)."""

from __future__ import annotations

import ipaddress
import re

from tests.e2e.dev_cpu import CHAT_MODEL, EMBED_MODEL
from tests.e2e.servers import listeners, process_tree

PROGRESS_LINE = re.compile(r"^llm-serving: \[ *\d+ s\] (?P<deployment>\S+): (?P<state>starting|ready)$")


def test_every_listener_of_the_process_tree_is_on_the_loopback(gateway):
    listening = listeners(process_tree(gateway.process.pid))
    assert len(listening) > 10, f"expected Ray's, Serve's and HAProxy's listeners, found {listening}"
    beyond_loopback = {f"{ip}:{port}": owner for (ip, port), owner in listening.items()
                       if not _is_loopback(ip)}
    assert not beyond_loopback, f"listening beyond the loopback: {beyond_loopback}"


def test_the_terminal_shows_progress_and_the_logs_go_to_the_file_it_names(gateway):
    printed = gateway.log_path.read_text().splitlines()
    assert all(line.startswith("llm-serving: ") for line in printed), "\n".join(printed)
    assert printed[0] == f"llm-serving: Ray's and vLLM's logs go to {gateway.ray_log_path} (--verbose prints them here)"
    progress = [PROGRESS_LINE.match(line) for line in printed]
    states = {(match["deployment"], match["state"]) for match in progress if match}
    for model in (CHAT_MODEL, EMBED_MODEL):
        assert {(model, "starting"), (model, "ready")} <= states, "\n".join(printed)
    ready = [line for line in printed if " ready at http://" in line]
    assert len(ready) == 1 and re.search(r"after \d+ s", ready[0])
    assert len(printed) <= 12, "\n".join(printed)  # logs path, deploying, 2 per deployment, ready, reload hint
    ray_log = gateway.ray_log_path.read_text(errors="replace")
    assert "Initializing a V1 LLM engine" in ray_log  # vLLM's own engine log, from the replica


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or (address.version == 6 and address.ipv4_mapped is not None
                                   and address.ipv4_mapped.is_loopback)
