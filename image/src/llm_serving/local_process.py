"""The local command's process hygiene: what `llm-serving serve` starts, it stops, and the terminal
shows a person's view while Ray's and vLLM's logs go to a file.

Why a supervisor: Ray starts its GCS and raylet in our process group, its workers in groups of
their own, and Serve's HAProxy as a child of an actor. When a whole process group is signalled (as
`timeout`, systemd and container runtimes do), the raylet and the GCS die at the same moment as
the Ray driver, so the driver can neither shut Ray down nor find the HAProxy whose parent actor
died: it was left running on the serving port. So the command forks: the child runs the Ray driver;
the parent stays small, is the "child subreaper" of everything below it (orphans are re-parented
to it instead of init), and once the child has exited, or has not within a few seconds, stops and
reaps every process that is still below it. Nothing outlives the command, whichever way it is
stopped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, List, Optional, Set, TextIO

import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
# How long the child may take to stop Ray on its own before what is left is terminated.
CHILD_STOP_GRACE_S = 8.0
# How long the processes below get to stop on SIGTERM before they are killed. Ray's GCS, raylet
# and HAProxy stop within a second; vLLM's CPU engine and Ray's agents often not within five, and
# nothing is lost by killing them (the resource trackers still unlink their shared memory).
SWEEP_GRACE_S = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What signal.signal installs: called with the signal number and the interrupted frame.
SignalHandler = Callable[[int, Optional[FrameType]], Any]


def run_supervised(child: Callable[[], int], console: Callable[[str], None], log_path: Optional[Path] = None) -> int:
    """Run `child()` in a forked process and return its exit code once it and every process it
    started are gone. SIGINT and SIGTERM are passed on to the child (once), SIGHUP too. Which
    processes had to be killed is written to `log_path` (else to the console)."""
    _become_subreaper()
    child_pid = os.fork()
    if child_pid == 0:  # the child: run, flush, and leave without Ray's atexit hooks
        code = 1
        try:
            code = child()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return _Supervisor(child_pid, console, log_path).run()


class _Supervisor:
    def __init__(self, child_pid: int, console: Callable[[str], None], log_path: Optional[Path]) -> None:
        self.child_pid = child_pid
        self.console = console
        self.log_path = log_path
        self.child_code: Optional[int] = None
        self.stop_requested_at: Optional[float] = None
        self.hurry = False  # a second stop signal: no more grace

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._forward)
        while self.child_code is None:
            self._reap()
            if self.stop_requested_at is not None and (
                self.hurry or time.monotonic() - self.stop_requested_at > CHILD_STOP_GRACE_S
            ):
                _signal_quietly(self.child_pid, signal.SIGKILL)
            time.sleep(0.05)
        for signum in STOP_SIGNALS:  # from here on nothing interrupts the sweep
            signal.signal(signum, signal.SIG_IGN)
        killed = sweep_descendants(SWEEP_GRACE_S)
        if killed:
            line = f"llm-serving: killed what did not stop within {SWEEP_GRACE_S:.0f} s: {', '.join(killed)}"
            if self.log_path is None:
                self.console(line)
            else:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("a") as log:
                    print(line, file=log)
        if self.stop_requested_at is not None:
            self.console(f"llm-serving: stopped in {time.monotonic() - self.stop_requested_at:.1f} s")
        return self.child_code

    def _on_stop_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
            # Sent to the whole group, the child has it already; a second one would interrupt its
            # stop, so the child ignores repeats (see ignore_repeated_stop_signals).
            _signal_quietly(self.child_pid, signum)
        else:
            self.hurry = True

    def _forward(self, signum: int, frame: Optional[FrameType]) -> None:
        _signal_quietly(self.child_pid, signum)

    def _reap(self) -> None:
        """Collect exited children: ours, and orphans re-parented to us as the subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child_pid:
                self.child_code = os.waitstatus_to_exitcode(status)
                if self.child_code < 0:  # killed by a signal: shells report 128 + signal
                    self.child_code = 128 - self.child_code


def sweep_descendants(grace_s: float) -> List[str]:
    """Stop every process below this one and reap them all; return "name[pid]" of each process
    that had to be killed.

    All are asked at once (SIGTERM: Ray's GCS and raylet, its workers, vLLM's engine processes,
    HAProxy); what is left after `grace_s` is killed, Python's multiprocessing resource trackers
    last: they ignore SIGTERM by design and, once the processes they serve are gone, unlink the
    shared memory those left behind (vLLM's 160 MB message queues in /dev/shm) and exit. Whatever
    in /dev/shm the processes had mapped and is still there at the end is removed too (one stop
    in six left a queue behind without it)."""
    me = psutil.Process()
    killed: List[str] = []
    shared_memory: Set[str] = set()
    for _ in range(3):  # a process that was starting one as we looked: look again
        processes = me.children(recursive=True)
        if not processes:
            break
        shared_memory |= _shared_memory_mapped_by(processes)
        _signal_all(processes, signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=grace_s)
        trackers = [process for process in alive if _is_resource_tracker(process)]
        others = [process for process in alive if process not in trackers]
        killed += _signal_all(others, signal.SIGKILL)
        psutil.wait_procs(others, timeout=grace_s)
        _, alive = psutil.wait_procs(trackers, timeout=grace_s)
        killed += _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace_s)
    while True:  # zombies of re-parented orphans that psutil did not wait for
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    # What a killed process (or a resource tracker that did not get to it) left in /dev/shm: every
    # process that mapped it was ours and is gone, so nobody can use it any more.
    for path in shared_memory:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return killed


def _shared_memory_mapped_by(processes: List[psutil.Process]) -> Set[str]:
    """The /dev/shm files the processes have mapped (from /proc/PID/maps: cheaper than smaps)."""
    paths: Set[str] = set()
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/maps") as maps:
                for line in maps:  # address perms offset device inode [path]
                    fields = line.split(maxsplit=5)
                    path = fields[5].strip() if len(fields) == 6 else ""
                    if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                        paths.add(path)
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return paths


def _signal_all(processes: List[psutil.Process], signum: int) -> List[str]:
    """Send `signum` to each process still there; return "name[pid]" of those it reached."""
    reached = []
    for process in processes:
        try:
            name = process.name()
            process.send_signal(signum)
            reached.append(f"{name}[{process.pid}]")
        except psutil.NoSuchProcess:
            pass
    return reached


def _is_resource_tracker(process: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def ignore_repeated_stop_signals(first: SignalHandler) -> None:
    """Install `first` for SIGINT and SIGTERM; after it has run once, both are ignored, so a stop
    that began is not interrupted by the same signal arriving again (from the group and from the
    supervisor)."""

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        first(signum, frame)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


class Console:
    """Where a person reads the command's progress: the terminal the command was started from.

    Quiet mode moves file descriptors 1 and 2, which Ray's and vLLM's processes inherit and the
    driver's log forwarding writes to, into a log file; the console keeps duplicates of the
    original ones, so progress lines and errors still reach the person."""

    def __init__(self, out: TextIO, err: TextIO, log_path: Optional[Path]) -> None:
        self.out, self.err, self.log_path = out, err, log_path

    @classmethod
    def terminal(cls) -> Console:
        return cls(sys.stdout, sys.stderr, None)

    @classmethod
    def with_logs_in(cls, log_path: Path) -> Console:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        out = os.fdopen(os.dup(1), "w", buffering=1)
        err = os.fdopen(os.dup(2), "w", buffering=1)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        return cls(out, err, log_path)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def log_hint(self) -> str:
        return "" if self.log_path is None else f"\nllm-serving: Ray's and vLLM's logs are in {self.log_path}"

    def error(self, text: str) -> None:
        print(text, file=self.err, flush=True)
        if self.log_path is not None:  # keep the log whole too
            print(text, file=sys.stderr, flush=True)


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
