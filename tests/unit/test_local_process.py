"""The local command's supervisor on plain processes (no Ray): what its child leaves behind, an
orphan that ignores SIGTERM as Serve's HAProxy outlived its actor, and shared memory a killed
process had mapped, is gone when it returns. Each case runs in its own Python process, so the
sweep there cannot touch this test run's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil

ORPHAN_THAT_IGNORES_SIGTERM = """
import mmap, os, signal, sys, time
from llm_serving.local_process import run_supervised

work = sys.argv[1]
shm_path = f"/dev/shm/llm-serving-test-{os.getpid()}"

def child():
    if os.fork() == 0:
        os.setsid()  # its own session, like a Ray worker's children
        if os.fork() == 0:  # the grandchild: orphaned when its parent exits at once
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            fd = os.open(shm_path, os.O_CREAT | os.O_RDWR)
            os.ftruncate(fd, 4096)
            mapped = mmap.mmap(fd, 4096)
            with open(f"{work}/orphan.pid", "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        os._exit(0)
    while not os.path.exists(f"{work}/orphan.pid"):
        time.sleep(0.05)
    time.sleep(0.2)
    return 3

code = run_supervised(child, print)
print("shm left:", os.path.exists(shm_path))
sys.exit(code)
"""


def test_the_supervisor_stops_an_orphan_that_ignores_sigterm_and_removes_its_shared_memory(tmp_path):
    script = tmp_path / "supervise.py"
    script.write_text(textwrap.dedent(ORPHAN_THAT_IGNORES_SIGTERM))
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 3, result.stderr  # the child's own exit code
    orphan = int((tmp_path / "orphan.pid").read_text())
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert "llm-serving: killed what did not stop within 2 s: python" in result.stdout, result.stdout
    assert "shm left: False" in result.stdout, result.stdout
