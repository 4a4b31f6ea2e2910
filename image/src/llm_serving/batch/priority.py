"""Batch work gives way to online work on the CPU: the threads of the batch pipeline run at a
higher nice value (batch.worker_niceness, 19 by default) than the engines and the gateway. Ray
starts its workers at 15 (RAY_worker_niceness: a worker's main thread and the threads it starts,
which include the engines' vLLM processes; its C++ I/O threads stay at 0), so only 16-19 put batch
work below online work, and a value is only ever raised, never lowered back.

On a small node the cost of a running batch is less the engine slots its rows hold than the CPU of
Ray Data's own pipeline (its map workers, their Serve handles, the executor loop), which competes
with online requests for the same cores. A nice value does not cap batch work: an idle machine still
gives it every core; a busy one runs the online requests first.

Where it applies (the engine replicas and the gateway are never touched):
- Ray Data's workers (the map actor that sends rows to the engines, the postprocess tasks): the
  runner's runtime env carries BATCH_WORKER_NICENESS_ENV, which Ray Data's tasks and actors inherit,
  and our preprocess and postprocess functions lower their whole process once, on their first row.
  The env var also keeps these workers in a pool of their own: Ray reuses a worker only for tasks of
  the same runtime env, so a lowered process never goes on to host anything else. (Ray's
  `worker_process_setup_hook` is no alternative: Ray 2.60 honours it only in the job's runtime env,
  ray.init's, not in a deployment's or a task's.)
- The BatchRunner replica: only its batch thread (and the Ray Data executor threads it starts),
  so the replica answers the gateway's submit and cancel at the priority Ray gave it.

Linux keeps a nice value per thread (os.nice and setpriority(PRIO_PROCESS, 0) change the calling
thread only) and a new thread starts at its creator's value, so "the whole process" means every
thread in /proc/self/task, after which the threads started later inherit the lowered value.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

# Set in the BatchRunner's runtime env (app.build_batch_runner); read by Ray Data's workers.
BATCH_WORKER_NICENESS_ENV = "LLM_SERVING_BATCH_WORKER_NICENESS"

_process_lowered = False


def lower_thread(niceness: int, thread_id: Optional[int] = None) -> None:
    """Raise one thread's nice value to `niceness` (never lower it: that would raise its priority).
    `thread_id`: a Linux thread id; the calling thread when None."""
    if niceness <= 0:
        return
    tid = threading.get_native_id() if thread_id is None else thread_id
    current = os.getpriority(os.PRIO_PROCESS, tid)
    if current < niceness:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)


def lower_process(niceness: int) -> None:
    """Raise the nice value of every thread of this process to `niceness`."""
    if niceness <= 0:
        return
    try:
        thread_ids = [int(name) for name in os.listdir("/proc/self/task")]
    except FileNotFoundError:  # no procfs (macOS): there setpriority(PRIO_PROCESS, 0) is the process
        os.setpriority(os.PRIO_PROCESS, 0, max(niceness, os.getpriority(os.PRIO_PROCESS, 0)))
        return
    for tid in thread_ids:
        try:
            lower_thread(niceness, tid)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def lower_batch_worker_once() -> None:
    """In a Ray Data worker of the batch pipeline: lower the whole process to the niceness its
    runtime env names, on the first call in this process; later calls cost a flag check."""
    global _process_lowered
    if _process_lowered:
        return
    _process_lowered = True
    lower_process(int(os.environ.get(BATCH_WORKER_NICENESS_ENV, "0")))
