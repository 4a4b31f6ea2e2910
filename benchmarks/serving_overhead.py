"""What the gateway costs, with intervals that hold on a noisy 2-core machine (issue 17, part 1).

Servers, each serving the tiny model builtin://tiny-chat on the CPU (API key on for ours):
  C    vLLM's own OpenAI server
  B    plain ray.serve.llm.build_openai_app with the fast-path flags and no stream batching
  A1   our app, one model, direct streaming (the gateway inside the engine replica)
  A2   our app, chat + embedding model (two engines; the gateway deployment in front)
  A3   our app, one model, `gateway.direct_streaming: false` (the hop through the gateway deployment)
  A4   our app, chat + embedding model with `gateway.direct_model: tiny-chat` (the chat engine's replica
       is the ingress; the embedding model is reached from it over a handle)
  A5   A4 with RAG (a Milvus Lite file) and the Batch API on: every gateway feature in that replica
  A1'  a second start of A1: a server must agree with itself within the interval

The servers of a phase (default: C, B, A1, A1', then A1, A2, A3, then A1, A4, then A1, A5; all at
once would hold ~46 GiB) are
started once, then frozen (SIGSTOP to every process of the server's tree). In each round each server
in turn is thawed (SIGCONT), warmed on every measured path, measured and frozen again, so exactly one
server is ever busy (an idle Ray cluster beside the measured one costs it a share of two cores) and
no server is restarted between trials (a start takes 1-2 min). The order is rotated each round. A
trial at concurrency c is a fixed number of non-streamed requests (req/s, p50 latency) and of
streamed ones (TTFT p50, gap between chunks p50). Ratios are taken per round (both trials seconds
apart) and summarised as the median over the rounds with a distribution-free 95% confidence interval
of the median (order statistics of the binomial; see benchmarks/trial_stats.py). Slow-mode trials
are counted per server.

Run it with `make bench` (about 30 minutes on an idle 2-core machine with the defaults); --help for
rounds, phases, concurrency and pinning.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.trial_stats import (  # noqa: E402
    SLOW_MODE_DEFINITION,
    StreamedRequest,
    Trial,
    fast_rounds,
    median_interval,
    paired_differences,
    paired_ratios,
    ratio_pairs,
    round_order,
    slow_trials,
)
from tests.e2e.servers import free_port, per_instance_ports  # noqa: E402

BIN = Path(sys.executable).parent
API_KEY = "sk-benchmark-0123456789abcdef"
FAST_PATH = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
}
TOKENS = 16
PROMPT = [{"role": "user", "content": "Tell me about Ray Serve and vLLM."}]
ALL_SERVERS = ["C", "B", "A1", "A2", "A3", "A4", "A5", "A1'"]
LOAD_GENERATOR = "load generator (this process)"
# The CPU split prints processes that take at least this much per request (the rest are summed).
CPU_SPLIT_MIN_MS = 0.05
# Four phases: all eight side by side would hold ~46 GiB (PSS: A1 5.1 GiB, A2 7.7, A3 4.9, A4 7.5, A5 about
# 8, C 2.6; frozen or not). A1 is in each, the reference of every ratio but B/C; the twin A1' checks A1
# within one phase.
DEFAULT_PHASES = "C,B,A1,A1';A1,A2,A3;A1,A4;A1,A5"
MIN_AVAILABLE_GIB = 4.0
INITIAL_CPUS = os.sched_getaffinity(0)
# Ray's logical CPUs (not cores: the engine's bundle and Serve's actors need room to be scheduled);
# the same for every Ray server, so none gets more prestarted workers than another.
RAY_NUM_CPUS = {"B": 8, "A1": 8, "A1'": 8, "A2": 8, "A3": 8, "A4": 8, "A5": 8}


def chat_body(stream: bool) -> dict:
    return {"model": "tiny-chat", "messages": PROMPT, "max_tokens": TOKENS, "ignore_eos": True,
            "temperature": 0, "stream": stream}


# ---------------------------------------------------------------- load


async def _streamed_httpx(client: httpx.AsyncClient, url: str) -> Optional[StreamedRequest]:
    start = time.perf_counter()
    chunks: List[float] = []
    try:
        async with client.stream("POST", url, json=chat_body(True)) as response:
            if response.status_code != 200:
                await response.aread()
                return None
            async for line in response.aiter_lines():
                if _is_token_event(line):
                    chunks.append((time.perf_counter() - start) * 1000)
    except httpx.TransportError:  # a reset connection is the server's error, not the benchmark's end
        return None
    return _streamed(start, chunks)


async def _streamed_aiohttp(session, url: str) -> Optional[StreamedRequest]:
    import aiohttp

    start = time.perf_counter()
    chunks: List[float] = []
    try:
        async with session.post(url, json=chat_body(True)) as response:
            if response.status != 200:
                await response.read()
                return None
            async for raw in response.content:  # one line per iteration, as it arrives
                if _is_token_event(raw.decode().rstrip("\r\n")):
                    chunks.append((time.perf_counter() - start) * 1000)
    except aiohttp.ClientError:
        return None
    return _streamed(start, chunks)


def _is_token_event(line: str) -> bool:
    # Every event with a choice is one engine step (one token here: ignore_eos, no stream batching);
    # the tiny model's byte-level tokens often decode to "", so content is not the test.
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    return bool(json.loads(line[6:]).get("choices"))


def _streamed(start: float, chunks: List[float]) -> Optional[StreamedRequest]:
    if not chunks:
        return None
    return StreamedRequest(ttft_ms=chunks[0], total_ms=(time.perf_counter() - start) * 1000, chunk_times_ms=chunks)


async def _run_workers(concurrency: int, total: int, one: Callable) -> float:
    """`total` calls of `one()` by `concurrency` workers; returns the elapsed seconds."""
    remaining = [total]

    async def worker():
        while remaining[0] > 0:
            remaining[0] -= 1
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def measure(trial: Trial, base_url: str, requests: int, streamed: int, stream_client: str) -> None:
    """Fill `trial`: `requests` non-streamed requests, then `streamed` streamed ones, at its concurrency."""
    url = f"{base_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {API_KEY}"}
    c = trial.concurrency
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        async def plain():
            started = time.perf_counter()
            try:
                response = await client.post(url, json=chat_body(False))
                error = "" if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as failure:
                error = repr(failure)
            if not error:
                trial.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                _record_error(trial, error)

        if requests:
            elapsed = await _run_workers(c, requests, plain)
            # A trial of errors only has no rate (a 0 would pass for a slow server in the ratios).
            trial.requests_per_s = len(trial.latencies_ms) / elapsed if trial.latencies_ms else float("nan")

        if stream_client == "httpx":
            async def stream_one():
                result = await _streamed_httpx(client, url)
                _record(trial, result)

            if streamed:
                await _run_workers(c, streamed, stream_one)
    if stream_client == "aiohttp" and streamed:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=c)
        async with aiohttp.ClientSession(connector=connector, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def stream_one_aiohttp():
                _record(trial, await _streamed_aiohttp(session, url))

            await _run_workers(c, streamed, stream_one_aiohttp)


def _record(trial: Trial, result: Optional[StreamedRequest]) -> None:
    if result is None:
        _record_error(trial, "a streamed request failed")
    else:
        trial.streamed.append(result)


def _record_error(trial: Trial, error: str) -> None:
    trial.errors += 1
    trial.first_error = trial.first_error or error


# ---------------------------------------------------------------- servers


class Server:
    """One server's process tree, started once, frozen and thawed between its trials."""

    def __init__(self, name: str, command: List[str], env: Dict[str, str], port: int, work: Path,
                 cpus: Optional[Set[int]], probe_embeddings: bool = False):
        self.name, self.command, self.env, self.port, self.cpus = name, command, env, port, cpus
        self.probe_embeddings = probe_embeddings
        self.log = work / f"{name.replace(chr(39), '-twin')}.log"
        self.process: Optional[subprocess.Popen] = None
        self.start_seconds = float("nan")
        self.started_tree: Dict[Tuple[int, float], str] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cpus = self.cpus
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **self.env, **per_instance_ports()},
            start_new_session=True,  # its own process group: a hard kill takes Ray's children too
            # Every process of the server inherits this affinity (vLLM then binds its OpenMP threads
            # within it, per VLLM_CPU_OMP_THREADS_BIND).
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.wait_until_serving(deadline_s=900)
        self.start_seconds = time.monotonic() - started

    def cpu_seconds(self) -> Dict[int, Tuple[str, float]]:
        """{pid: (process_label, user + system CPU seconds so far)} of every process of the tree."""
        readings = {}
        for process in self._tree():
            try:
                times = process.cpu_times()
                readings[process.pid] = (process_label(process), times.user + times.system)
            except psutil.NoSuchProcess:
                continue
        return readings

    def identities(self) -> Dict[Tuple[int, float], str]:
        """{(pid, start time): name} of every process of the tree: a replica that Ray replaced (say,
        after a failed health check of a frozen cluster) shows up as a new process of its name."""
        found = {}
        for process in self._tree():
            try:
                found[(process.pid, process.create_time())] = process.name()
            except psutil.NoSuchProcess:
                pass
        return found

    def tree_changes(self) -> str:
        now = self.identities()
        gone = sorted(name for key, name in self.started_tree.items() if key not in now)
        new = sorted(name for key, name in now.items() if key not in self.started_tree)
        return f"{self.name}: of {len(self.started_tree)} processes gone {gone or 'none'}, new {new or 'none'}"

    def wait_until_serving(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        headers = {"authorization": f"Bearer {API_KEY}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            try:
                chat = httpx.post(f"{self.base_url}/v1/chat/completions", timeout=10, headers=headers,
                                  json={"model": "tiny-chat", "messages": PROMPT, "max_tokens": 1})
                ready = chat.status_code == 200
                if ready and self.probe_embeddings:
                    embed = httpx.post(f"{self.base_url}/v1/embeddings", timeout=10, headers=headers,
                                       json={"model": "all-minilm-l6-v2", "input": "warm"})
                    ready = embed.status_code == 200
                if ready:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} did not serve within {deadline_s:.0f} s; see {self.log}")

    def _tree(self) -> List[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal_tree(self, signum: int) -> None:
        for process in self._tree():
            try:
                process.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    def freeze(self) -> None:
        self._signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_tree(signal.SIGCONT)

    def memory_gib(self) -> float:
        """Proportional set size of the whole tree (shared pages split among their users)."""
        total = 0
        for process in self._tree():
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**30

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        tree = self._tree()
        self.thaw()  # a stopped process would not act on SIGINT
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for process in tree[1:]:  # anything of its tree that left the group or outlived it
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def process_label(process: psutil.Process) -> str:
    """What a process of a server's tree is: Ray's and vLLM's process titles (ray::ServeReplica:
    <app>:<deployment>, ray::HAProxyManager, VLLM::EngineCore, ...), else the program or script."""
    args = process.cmdline()
    if not args:
        return process.name()
    if args[0].startswith(("ray::", "VLLM::")):
        title = args[0].split()[0]
        # While an actor runs a method Ray titles it ray::Actor.method (ray::ServeController.
        # listen_for_change): the actor is what counts. Model ids keep their dots (llama-3.1-8b).
        head, dot, method = title.rpartition(".")
        return head if dot and method.isidentifier() else title
    program = os.path.basename(args[0])
    if program.startswith("python"):
        rest = args[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":  # interpreter flags (-u, -s)
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1]
        return os.path.basename(rest[0]) if rest else program
    return program


def cpu_split(before: Dict[int, Tuple[str, float]], after: Dict[int, Tuple[str, float]],
              requests: int) -> Dict[str, float]:
    """CPU ms per request, summed by process label, between two cpu_seconds() readings. Taken per
    process (a process's title can change in between); one that started in between counts from
    zero, one that ended is left out."""
    if requests <= 0:
        return {}
    split: Dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        used = seconds - (before[pid][1] if pid in before else 0.0)
        split[label] = split.get(label, 0.0) + used * 1000 / requests
    return split


def our_app_config(work: Path, name: str, with_embedding: bool, direct_streaming: bool,
                   direct_model: Optional[str], every_feature: bool) -> Path:
    keys = work / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "key": API_KEY}]}))
    profile = yaml.safe_load((REPO / "values" / "dev-cpu.yaml").read_text())["app"]
    models = ["tiny-chat", "all-minilm-l6-v2"] if with_embedding else ["tiny-chat"]
    args = {
        "models": {model: profile["models"][model] for model in models},
        "gateway": {"auth": {"mode": "api_key", "api_keys": {"file": str(keys)}}, "direct_streaming": direct_streaming},
    }
    if direct_model is not None:
        args["gateway"]["direct_model"] = direct_model
    if every_feature:  # RAG and the Batch API: their layers see every request, used or not
        args["rag"] = {"store": {"uri": str(work / f"rag-{name}" / "milvus.db")}}
        args["batch"] = {"store_uri": str(work / f"batch-{name}")}
    path = work / f"app-{name.replace(chr(39), '-twin')}.yaml"
    path.write_text(yaml.safe_dump(args))
    return path


def make_server(name: str, work: Path, model_path: str, cpus: Optional[Set[int]], omp_bind: str,
                kv_cache_gib: int) -> Server:
    port = free_port()
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": omp_bind}
    ours = {  # name: (chat + embedding model, direct streaming, gateway.direct_model, rag and batch on)
        "A1": (False, True, None, False), "A1'": (False, True, None, False), "A2": (True, True, None, False),
        "A3": (False, False, None, False), "A4": (True, True, "tiny-chat", False), "A5": (True, True, "tiny-chat", True),
    }
    if name in ours:
        with_embedding, direct, direct_model, every_feature = ours[name]
        config = our_app_config(work, name, with_embedding, direct, direct_model, every_feature)
        command = [str(BIN / "llm-serving"), "serve", str(config), "--port", str(port),
                   "--metrics-port", str(free_port()), "--num-cpus", str(RAY_NUM_CPUS[name])]
        return Server(name, command, {**env, **FAST_PATH}, port, work, cpus, probe_embeddings=with_embedding)
    if name == "B":  # plain_ray_serve_llm.py starts Ray with num_cpus=8 (RAY_NUM_CPUS["B"])
        command = [sys.executable, str(REPO / "benchmarks" / "plain_ray_serve_llm.py"), model_path, str(port), "0"]
        return Server(name, command, {**env, **FAST_PATH}, port, work, cpus)
    if name == "C":
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
                   "--served-model-name", "tiny-chat", "--dtype", "float32", "--enforce-eager",
                   "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(port)]
        return Server(name, command, env, port, work, cpus)
    raise SystemExit(f"unknown server {name!r}; choose from {', '.join(ALL_SERVERS)}")


# ---------------------------------------------------------------- the run


def parse_cpus(text: str) -> Optional[Set[int]]:
    """'0', '0-1', '0,1' -> a CPU set; 'all' -> None (no pinning)."""
    if text == "all":
        return None
    cpus: Set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def requests_for(concurrency: int, args) -> Tuple[int, int]:
    plain = args.requests or max(24, 12 * concurrency)
    streamed = args.stream_requests if args.stream_requests >= 0 else max(16, 4 * concurrency)
    return plain, streamed


def warm(server: Server, levels: Sequence[int], stream_client: str) -> None:
    """Every measured path once, at the highest concurrency: non-streamed and streamed requests
    (first requests after a thaw pay for page faults and re-established connections)."""
    top = max(levels)
    asyncio.run(measure(Trial(server.name, -1, top), server.base_url, 2 * top, top, stream_client))


def run_round(round_: int, servers: Dict[str, Server], label: Dict[str, str], order: List[str],
              levels: Sequence[int], args, trials: Dict[str, List[Trial]]) -> None:
    for name in order:
        server = servers[name]
        server.thaw()
        cells = []
        try:
            server.wait_until_serving(deadline_s=120)
            warm(server, levels, args.stream_client)
            for concurrency in levels:
                plain, streamed = requests_for(concurrency, args)
                trial = Trial(label[name], round_, concurrency)
                server_before, client_before = server.cpu_seconds(), _own_cpu_seconds()
                asyncio.run(measure(trial, server.base_url, plain, streamed, args.stream_client))
                server_after, client_after = server.cpu_seconds(), _own_cpu_seconds()
                answered = len(trial.latencies_ms) + len(trial.streamed)
                trial.cpu_ms_per_request = {**cpu_split(server_before, server_after, answered),
                                            **cpu_split(client_before, client_after, answered)}
                trials[label[name]].append(trial)
                errors = f" errors {trial.errors} ({trial.first_error})" if trial.errors else ""
                cells.append(f"c={concurrency} {trial.requests_per_s:6.1f} req/s ttft {trial.ttft_p50_ms:5.1f} ms"
                             f"{' SLOW-STREAM' if trial.coalesced else ''}{errors}")
        except RuntimeError as error:  # a server that died: its trials of this round are missing
            cells.append(f"FAILED: {error}")
        finally:
            server.freeze()
        print(f"-- round {round_ + 1}, {label[name]:<6}: " + "; ".join(cells), flush=True)


def _own_cpu_seconds() -> Dict[int, Tuple[str, float]]:
    """The load generator's CPU time so far, as Server.cpu_seconds gives a server's."""
    times = os.times()
    return {os.getpid(): (LOAD_GENERATOR, times.user + times.system)}


def print_settings(args, levels: Sequence[int]) -> None:
    print("settings:")
    print(f"  load generator pinned to CPUs {args.client_cpus}; servers' processes to CPUs {args.server_cpus}; "
          f"VLLM_CPU_OMP_THREADS_BIND={args.omp_bind} (the engines' OpenMP threads); "
          f"VLLM_CPU_KVCACHE_SPACE={args.kv_cache_gib} GiB per engine")
    print("  Ray num_cpus (logical): " + ", ".join(f"{name} {n}" for name, n in RAY_NUM_CPUS.items())
          + " (B: plain_ray_serve_llm.py's own); fast path "
          + " ".join(f"{k}={v}" for k, v in FAST_PATH.items()) + " for B and ours; B without stream batching")
    print(f"  phases {args.phases!r}: the servers of a phase run side by side, one busy at a time, the others "
          f"frozen with SIGSTOP (whole process tree), thawed with SIGCONT and warmed (non-streamed and streamed "
          f"requests at c={max(levels)}) before timing; ratios pair trials of one round of one phase")
    order = "rotated" if args.seed is None else f"shuffled (seed {args.seed})"
    print(f"  {args.rounds} rounds per phase, order {order} per round; {TOKENS} tokens per request (ignore_eos); "
          "per trial: "
          + ", ".join(f"c={c}: {requests_for(c, args)[0]} non-streamed + {requests_for(c, args)[1]} streamed"
                      for c in levels)
          + f"; streamed with {args.stream_client} (keep-alive)", flush=True)


def print_phase_servers(servers: Dict[str, Server]) -> None:
    print("  memory (PSS) after start: " + ", ".join(f"{s.name} {s.memory_gib():.1f} GiB" for s in servers.values())
          + f"; machine's MemAvailable {psutil.virtual_memory().available / 2**30:.1f} GiB; start times: "
          + ", ".join(f"{s.name} {s.start_seconds:.0f} s" for s in servers.values()), flush=True)


def fmt_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def print_report(trials: Dict[str, List[Trial]], pairs: List[Tuple[str, str]], levels: Sequence[int]) -> None:
    print(f"\nresults: {TOKENS} tokens per request; req/s is the median over trials with its 95% CI "
          "(distribution-free: order statistics of the binomial); latency, TTFT and gap are p50 within a "
          "trial, median over trials; NAME@P is server NAME in phase P")
    print(SLOW_MODE_DEFINITION)
    print(f"{'server':<8}{'c':>3}  {'req/s median [95% CI]':<26}{'p50 lat ms':>11}{'TTFT p50':>10}"
          f"{'gap p50':>9}{'slow':>8}{'errors':>8}")
    for label, server_trials in trials.items():
        slow = slow_trials(server_trials)
        for concurrency in levels:
            at = [t for t in server_trials if t.concurrency == concurrency]
            if not at:
                continue
            rate = median_interval([t.requests_per_s for t in at])
            latency = _nan_median([t.latency_p50_ms for t in at])
            ttft = _nan_median([t.ttft_p50_ms for t in at])
            gap = _nan_median([t.gap_p50_ms for t in at])
            slow_here = sum(1 for t in slow if t.concurrency == concurrency)
            print(f"{label:<8}{concurrency:>3}  {str(rate):<26}{fmt_ms(latency):>11}{fmt_ms(ttft):>10}{fmt_ms(gap):>9}"
                  f"{f'{slow_here}/{len(at)}':>8}{sum(t.errors for t in at):>8}")
    print("\nratios: median over rounds of the per-round req/s ratio [95% CI] (trials of one round paired); "
          "TTFT p50 difference in ms, median [95% CI]")
    for ours, base in pairs:
        print(f"{ours + '/' + base:<11} " + "; ".join(
            ratio_cell(trials[ours], trials[base], concurrency, None) for concurrency in levels))
    print("\nratios in the fast mode: as above, over the rounds in which neither server's trial was slow "
          "(what each path costs while the machine starves neither; the slow counts above say how often "
          "each server fell into the slow mode)")
    for ours, base in pairs:
        print(f"{ours + '/' + base:<11} " + "; ".join(
            ratio_cell(trials[ours], trials[base], concurrency, fast_rounds(trials[ours], trials[base], concurrency))
            for concurrency in levels))


def print_cpu_split(trials: Dict[str, List[Trial]], levels: Sequence[int]) -> None:
    """Where each server's time goes: CPU ms per answered request by process, median over its trials."""
    print(f"\nCPU per answered request (ms, user + system), median over trials, by process of the server's "
          f"tree and the load generator; processes under {CPU_SPLIT_MIN_MS} ms at every concurrency are summed "
          "as 'other'; total is the median of the per-trial sums")
    for label, server_trials in trials.items():
        splits = {c: [t.cpu_ms_per_request for t in server_trials if t.concurrency == c and t.cpu_ms_per_request]
                  for c in levels}
        names = {name for per_level in splits.values() for split in per_level for name in split}
        medians = {c: {name: _nan_median([split.get(name, 0.0) for split in splits[c]]) for name in names}
                   for c in levels}

        def largest(name: str) -> float:
            return max((medians[c][name] for c in levels if not math.isnan(medians[c][name])), default=0.0)

        shown = sorted((name for name in names if largest(name) >= CPU_SPLIT_MIN_MS), key=largest, reverse=True)
        print(f"{label + ':':<62}" + "".join(f"{'c=' + str(c):>10}" for c in levels))
        for name in shown:
            print(f"  {name[:60]:<60}" + "".join(f"{fmt_ms(medians[c][name]):>10}" for c in levels))
        other = {c: _nan_median([sum(v for n, v in split.items() if n not in shown) for split in splits[c]])
                 for c in levels}
        total = {c: _nan_median([sum(split.values()) for split in splits[c]]) for c in levels}
        print(f"  {'other':<60}" + "".join(f"{fmt_ms(other[c]):>10}" for c in levels))
        print(f"  {'total':<60}" + "".join(f"{fmt_ms(total[c]):>10}" for c in levels))


def ratio_cell(ours: List[Trial], base: List[Trial], concurrency: int, rounds: Optional[Set[int]]) -> str:
    """One concurrency's req/s ratio and TTFT difference of two servers, over `rounds` (None: all)."""
    ratio = median_interval(paired_ratios(ours, base, concurrency, rounds=rounds))
    ttft = median_interval(paired_differences(ours, base, concurrency, "ttft_p50_ms", rounds=rounds))
    coverage = f", CI {ratio.coverage:.0%}" if ratio.n and ratio.coverage < 0.95 else ""
    return f"c={concurrency}: {ratio}x (n={ratio.n}{coverage}), TTFT {ttft} ms"


def _nan_median(values: List[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds to the finally that thaws and stops every server


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default=DEFAULT_PHASES,
                        help=f"servers run side by side, phases split by ';' (default: {DEFAULT_PHASES!r}; "
                             f"servers: {', '.join(ALL_SERVERS)})")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=20, help="trials per server, concurrency and phase (default: 20)")
    parser.add_argument("--requests", type=int, default=0,
                        help="non-streamed requests per trial (default: max(24, 12 x concurrency))")
    parser.add_argument("--stream-requests", type=int, default=-1,
                        help="streamed requests per trial (default: max(16, 4 x concurrency); 0: none)")
    parser.add_argument("--stream-client", choices=["httpx", "aiohttp"], default="httpx")
    parser.add_argument("--seed", type=int, default=None, help="shuffle the order per round (default: rotate)")
    parser.add_argument("--client-cpus", default="0", help="CPUs of the load generator ('all': unpinned)")
    parser.add_argument("--server-cpus", default="0-1", help="CPUs of the servers' processes ('all': unpinned)")
    parser.add_argument("--omp-bind", default="1", help="VLLM_CPU_OMP_THREADS_BIND of every engine (default: core 1)")
    parser.add_argument("--kv-cache-gib", type=int, default=1,
                        help="VLLM_CPU_KVCACHE_SPACE of every engine, whole GiB as vLLM reads it (default: 1)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    phases = [phase.split(",") for phase in args.phases.split(";")]
    for name in {name for phase in phases for name in phase} - set(ALL_SERVERS):
        raise SystemExit(f"unknown server {name!r} in --phases; choose from {', '.join(ALL_SERVERS)}")

    from llm_serving.builtin_models import tiny_chat_path

    model_path = str(tiny_chat_path())
    client_cpus, server_cpus = parse_cpus(args.client_cpus), parse_cpus(args.server_cpus)
    work = Path(tempfile.mkdtemp(prefix="llm-serving-bench-"))
    print(f"servers' logs in {work}", flush=True)
    print_settings(args, levels)
    seen = [name for phase in phases for name in phase]
    trials: Dict[str, List[Trial]] = {}
    pairs: List[Tuple[str, str]] = []
    begun = time.monotonic()
    for number, names in enumerate(phases, start=1):
        label = {name: name if seen.count(name) == 1 else f"{name}@{number}" for name in names}
        for name in names:
            trials[label[name]] = []
        pairs += [(label[a], label[b]) for a, b in ratio_pairs(names)]
        run_phase(number, names, label, trials, levels, args, work, model_path, server_cpus, client_cpus)
    print_report(trials, pairs, levels)
    print_cpu_split(trials, levels)
    print(f"\nthe whole run took {(time.monotonic() - begun) / 60:.1f} min")


def run_phase(number: int, names: List[str], label: Dict[str, str], trials: Dict[str, List[Trial]],
              levels: Sequence[int], args, work: Path, model_path: str, server_cpus: Optional[Set[int]],
              client_cpus: Optional[Set[int]]) -> None:
    servers: Dict[str, Server] = {}
    os.sched_setaffinity(0, INITIAL_CPUS)  # the servers' processes must not inherit the client's pinning
    try:
        for name in names:
            available = psutil.virtual_memory().available / 2**30
            if available < MIN_AVAILABLE_GIB:  # frozen servers keep their memory: stop before the OOM killer picks
                raise SystemExit(f"only {available:.1f} GiB available before starting {name}; each server needs "
                                 f"~3-6 GiB: run fewer servers per phase (--phases)")
            server = make_server(name, work, model_path, server_cpus, args.omp_bind, args.kv_cache_gib)
            servers[name] = server
            server.start()
            warm(server, levels, args.stream_client)
            server.started_tree = server.identities()
            server.freeze()
            print(f"-- phase {number}: {name} serving after {server.start_seconds:.0f} s, frozen", flush=True)
        print_phase_servers(servers)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        started = time.monotonic()
        for round_ in range(args.rounds):
            run_round(round_, servers, label, round_order(names, round_, args.seed), levels, args, trials)
        print(f"-- phase {number}: rounds took {(time.monotonic() - started) / 60:.1f} min; process trees after them "
              "(freezing must not make Ray replace a replica; Ray ends idle workers itself): "
              + "; ".join(s.tree_changes() for s in servers.values()), flush=True)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
