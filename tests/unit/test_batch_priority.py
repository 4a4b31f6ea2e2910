"""llm_serving.batch.priority on real threads of a real child process (nice values are per thread
on Linux and can only go up without privileges, so each case runs in a process of its own). That
Ray Data's workers of a running batch end up lowered is the e2e tests' (tests/e2e/test_batch_api.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llm_serving.batch.priority import BATCH_WORKER_NICENESS_ENV

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values are Linux's")

CHILD = textwrap.dedent("""
    import json, os, sys, threading
    from llm_serving.batch import priority

    def nice_of(tid):
        return os.getpriority(os.PRIO_PROCESS, tid)

    started, stop = [], threading.Event()
    def park():
        started.append(threading.get_native_id())
        stop.wait()
    before = [threading.Thread(target=park) for _ in range(3)]
    for thread in before:
        thread.start()
    while len(started) < 3:
        pass
    {action}
    later = threading.Thread(target=park)
    later.start()
    while len(started) < 4:
        pass
    report = {{
        "main": nice_of(threading.get_native_id()),
        "before": [nice_of(tid) for tid in started[:3]],
        "later": nice_of(started[3]),
        "all": sorted({{nice_of(int(tid)) for tid in os.listdir("/proc/self/task")}}),
    }}
    stop.set()
    print(json.dumps(report))
""")


def run_child(action: str, env_niceness=None, start_niceness: int = 0) -> dict:
    env = {**os.environ}
    env.pop(BATCH_WORKER_NICENESS_ENV, None)
    if env_niceness is not None:
        env[BATCH_WORKER_NICENESS_ENV] = str(env_niceness)
    command = [sys.executable, "-c", CHILD.format(action=action)]
    if start_niceness:
        command = ["nice", "-n", str(start_niceness)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_batch_worker_lowers_every_thread_and_the_threads_it_starts_later():
    report = run_child("priority.lower_batch_worker_once(); priority.lower_batch_worker_once()", env_niceness=7)
    assert report == {"main": 7, "before": [7, 7, 7], "later": 7, "all": [7]}


def test_a_process_without_the_env_var_keeps_its_priority():
    report = run_child("priority.lower_batch_worker_once()")
    assert report["all"] == [0]


def test_lowering_one_thread_leaves_the_others_alone():
    report = run_child("priority.lower_thread(5)")
    assert report["main"] == 5 and report["before"] == [0, 0, 0]
    assert report["later"] == 5  # started by the lowered thread: it inherits the value


def test_lowering_never_raises_a_priority():
    report = run_child("priority.lower_process(10)", start_niceness=15)
    assert report["all"] == [15]
