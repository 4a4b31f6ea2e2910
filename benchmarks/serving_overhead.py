"""What the gateway costs: our app against plain Ray Serve LLM and vLLM's own server, one run.

Each server serves the same tiny model (builtin://tiny-chat) on the CPU and gets the same load:
streaming chat completions of exactly 16 tokens at concurrency 1, 8 and 32. The servers of a phase
take turns (A B C A B C ...; one runs at a time: on two cores an idle Ray cluster beside the measured
one skews it) and each ratio is the median of the per-cycle ratios, so a drift in the machine's speed
hits all servers alike. It prints requests/s, time to first token and inter-token latency (p50/p99)
per server, then the ratios, where
  A   = our app, one model, fast path (direct streaming; gateway inside the engine replica; API key on)
  A'  = our app, one model, through the gateway deployment (gateway.direct_streaming: false; API key on)
  B   = plain ray.serve.llm.build_openai_app, tuned as our app is: the fast-path settings and no
        stream batching (what is left between A and B is our gateway)
  B0  = plain build_openai_app with Ray's defaults (50 ms stream batching, no HAProxy)
  C   = vLLM's own OpenAI server
Phase 1 runs A, B and C; phase 2 runs A', B and B0. Run it with `make bench` (about 45 minutes on
two cores with the default 3 cycles). Absolute numbers depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "sk-benchmark-0123456789abcdef"
FAST_PATH = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
}
RAY_DEFAULTS = {key: "0" for key in FAST_PATH}
TOKENS = 16
PROMPT = [{"role": "user", "content": "Tell me about Ray Serve and vLLM."}]


@dataclass
class LoadResult:
    requests_per_s: float
    ttft_ms: List[float]
    itl_ms: List[float]
    errors: int


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, ttft: List[float], itl: List[float]) -> bool:
    body = {"model": "tiny-chat", "messages": PROMPT, "max_tokens": TOKENS, "ignore_eos": True,
            "temperature": 0, "stream": True}
    start = time.perf_counter()
    last: Optional[float] = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return False
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                # Every event with a choice is one engine step (one token here: ignore_eos, no
                # batching); the tiny model's byte-level tokens often decode to "", so content is
                # not the test.
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()
                if last is None:
                    ttft.append((now - start) * 1000)
                else:
                    itl.append((now - last) * 1000)
                last = now
    except httpx.TransportError:  # a reset connection is the server's error, not the benchmark's end
        return False
    return True


async def run_load(base_url: str, concurrency: int, total: int) -> LoadResult:
    url = f"{base_url}/v1/chat/completions"
    ttft: List[float] = []
    itl: List[float] = []
    queue = list(range(total))
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers={"authorization": f"Bearer {API_KEY}"}) as client:
        async def worker():
            nonlocal errors
            while queue:
                queue.pop()
                if not await one_request(client, url, ttft, itl):
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult((total - errors) / elapsed, ttft, itl, errors)


def haproxy_ports() -> Dict[str, str]:
    """Ray's HAProxy binds fixed stats/metrics ports; side-by-side servers each need their own."""
    return {"RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}


class Server:
    def __init__(self, name: str, command: List[str], env: Dict[str, str], port: int, work: Path):
        self.name, self.command, self.env, self.port = name, command, env, port
        self.log = work / f"{name}.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env, **haproxy_ports()}, cwd=REPO,
                                        start_new_session=True)
        try:
            self._wait_until_ready()
        except BaseException:  # Ctrl-C or SIGTERM while it starts: __exit__ would not run, stop it here
            self.__exit__()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                response = httpx.post(f"{self.base_url}/v1/chat/completions", timeout=10,
                                      headers={"authorization": f"Bearer {API_KEY}"},
                                      json={"model": "tiny-chat", "messages": PROMPT, "max_tokens": 1})
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} was not ready in time; see {self.log}")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def our_app_config(work: Path, direct_streaming: bool) -> Path:
    keys = work / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "key": API_KEY}]}))
    profile = yaml.safe_load((REPO / "values" / "dev-cpu.yaml").read_text())["app"]
    args = {
        "models": {"tiny-chat": profile["models"]["tiny-chat"]},
        "gateway": {"auth": {"mode": "api_key", "api_keys": {"file": str(keys)}}, "direct_streaming": direct_streaming},
    }
    path = work / f"app-{direct_streaming}.yaml"
    path.write_text(yaml.safe_dump(args))
    return path


def servers(work: Path, model_path: str, only: List[str]) -> List[Server]:
    cpu_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    candidates = {
        "A": lambda p: Server("A", [str(BIN / "llm-serving"), "serve", str(our_app_config(work, True)), "--port", str(p)],
                              {**cpu_env, **FAST_PATH}, p, work),
        "A'": lambda p: Server("A'", [str(BIN / "llm-serving"), "serve", str(our_app_config(work, False)), "--port", str(p)],
                               {**cpu_env, **FAST_PATH}, p, work),
        "B": lambda p: Server("B", [sys.executable, str(REPO / "benchmarks" / "plain_ray_serve_llm.py"), model_path, str(p),
                                    "0"], {**cpu_env, **FAST_PATH}, p, work),
        "B0": lambda p: Server("B0", [sys.executable, str(REPO / "benchmarks" / "plain_ray_serve_llm.py"), model_path, str(p)],
                               {**cpu_env, **RAY_DEFAULTS}, p, work),
        "C": lambda p: Server("C", [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
                                    "--served-model-name", "tiny-chat", "--dtype", "float32", "--enforce-eager",
                                    "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(p)],
                              cpu_env, p, work),
    }
    return [candidates[name](free_port()) for name in only]


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds the `with server:` blocks, which stop the server in its own session


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="A,B,C;A',B,B0", help="servers measured together, phases split by ;")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--cycles", type=int, default=3, help="turns of each server (default: 3)")
    parser.add_argument("--requests-per-level", type=int, default=0,
                        help="requests per concurrency level and turn (default: max(64, 16 x concurrency))")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from llm_serving.builtin_models import tiny_chat_path

    model_path = str(tiny_chat_path())
    for phase in args.phases.split(";"):
        names = phase.split(",")
        turns: Dict[str, Dict[int, List[LoadResult]]] = {name: {c: [] for c in levels} for name in names}
        with tempfile.TemporaryDirectory(prefix="llm-serving-bench-") as tmp:
            for cycle in range(args.cycles):
                for server in servers(Path(tmp), model_path, names):
                    with server:
                        asyncio.run(run_load(server.base_url, 4, 16))  # warm-up
                        for concurrency in levels:
                            # Loads of 10-20 s: shorter ones mostly measured Ray's and vLLM's periodic
                            # background work on two cores (the same server varied 2x between turns).
                            total = args.requests_per_level or max(64, 16 * concurrency)
                            turns[server.name][concurrency].append(
                                asyncio.run(run_load(server.base_url, concurrency, total)))
                    print(f"-- cycle {cycle + 1}, {server.name}: " + ", ".join(
                        f"c={c} {turns[server.name][c][-1].requests_per_s:.1f} req/s" for c in levels), flush=True)
        print_table(turns, levels)


def merged(results: List[LoadResult]) -> LoadResult:
    return LoadResult(
        statistics.median(r.requests_per_s for r in results),
        [x for r in results for x in r.ttft_ms],
        [x for r in results for x in r.itl_ms],
        sum(r.errors for r in results),
    )


def print_table(turns: Dict[str, Dict[int, List[LoadResult]]], levels: List[int]) -> None:
    print(f"\n{TOKENS} tokens per request, streaming; req/s is the median turn; latencies in ms over all turns")
    print(f"{'server':<7}{'conc':>5}{'req/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}{'ITL p99':>9}{'errors':>8}")
    for name, by_level in turns.items():
        for concurrency in levels:
            r = merged(by_level[concurrency])
            print(f"{name:<7}{concurrency:>5}{r.requests_per_s:>9.1f}{percentile(r.ttft_ms, 50):>10.1f}"
                  f"{percentile(r.ttft_ms, 99):>10.1f}{percentile(r.itl_ms, 50):>9.2f}{percentile(r.itl_ms, 99):>9.2f}"
                  f"{r.errors:>8}")
    print("\nratios: median over turns of requests/s ours/theirs (TTFT p50 difference in ms)")
    for ours in ("A", "A'"):
        for base in ("B", "B0", "C"):
            if ours not in turns or base not in turns:
                continue
            cells = []
            for concurrency in levels:
                pairs = zip(turns[ours][concurrency], turns[base][concurrency])
                ratio = statistics.median(a.requests_per_s / b.requests_per_s for a, b in pairs)
                delta = (percentile(merged(turns[ours][concurrency]).ttft_ms, 50)
                         - percentile(merged(turns[base][concurrency]).ttft_ms, 50))
                cells.append(f"c={concurrency}: {ratio:.2f}x ({delta:+.1f} ms)")
            print(f"{ours}/{base}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
