"""The Batch API on the CPU: batch rows/s next to online requests/s on the same engines, and what a
running batch does to online latency, in interleaved rounds so that one noisy minute cannot decide it.

Starts `llm-serving serve` on values/dev-cpu.yaml (which enables the Batch API) with a fresh store
(or measures a running app with --url). After a warm-up, each of --rounds rounds takes three
measurements, in an order rotated by one each round (so no measurement always runs first or right
after a batch), each once the machine is quiet (settle()):
  - alone:  streamed chats (tiny-chat, 16 tokens) at a fixed concurrency, nothing else running:
            requests/s and time-to-first-token (TTFT) p50,
  - during: the same online load while a batch runs (started, rows finishing, still running when
            the load ends; it is cancelled after),
  - batch:  rows/s of a chat batch of --rows requests with no online load (create to completed).
Per round it prints the TTFT p50 ratio (during / alone) and the requests/s ratio (during / alone),
the numbers batch.engine_share, batch.worker_niceness and batch.max_rows_per_s are there to keep
near 1; then the median of the per-round values with a distribution-free 95% interval
(benchmarks/trial_stats.py). A ratio is taken within a round, so a machine that is slower in one
minute than the next moves both of its terms. To compare two settings (e.g. --max-rows-per-s 2 and
none), run twice and compare the intervals: the settings are fixed when the app is built.
Run by hand (make bench does not run it; the default run takes about 10 minutes on two cores):
  .venv/bin/python benchmarks/batch.py [--rounds 8] [--online 80] [--concurrency 4] [--rows 200]
      [--busy-rows 1000] [--engine-share 0.25] [--worker-niceness 19] [--max-rows-per-s 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set, Tuple

import httpx
import openai
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.dev_cpu import dev_cpu_with_keys  # noqa: E402
from tests.e2e.servers import BATCH_WORKER_TITLES, process_tree, start_app, thread_niceness  # noqa: E402

from benchmarks.trial_stats import median_interval, percentile, round_order  # noqa: E402

API_KEY = "sk-benchmark-batch-0123456789"
CHAT_MODEL = "tiny-chat"
MAX_TOKENS = 16


def chat_body(i: int) -> dict:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": f"Question {i}: what is the colour of item {i * 7}?"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }


async def online_load(url: str, count: int, concurrency: int) -> Tuple[float, List[float]]:
    """Streamed chats at `concurrency`: (requests/s, TTFT of each in ms)."""
    ttfts: List[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def worker(client: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            body = {**chat_body(10_000 + i), "stream": True}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                response.raise_for_status()
                first = None
                async for chunk in response.aiter_bytes():
                    if first is None and b'"content"' in chunk:
                        first = time.perf_counter()
            ttfts.append(((first or time.perf_counter()) - started) * 1000)

    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return count / elapsed, ttfts


def start_batch(client: openai.OpenAI, rows: int, offset: int) -> str:
    lines = [
        {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(offset + i)}
        for i in range(rows)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    file_id = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id


def wait(client: openai.OpenAI, batch_id: str, until=("completed", "failed", "cancelled")):
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)


# Every measurement starts on a quiet machine: after a batch, Ray Data's actors and tasks wind down
# for seconds, and an online measurement taken meanwhile came out up to 5x slower (online alone
# TTFT p50 varied 30-210 ms between rounds when each waited a fixed 2 s).
QUIET_CPU_PERCENT = 20.0  # of all cores, over one second
SETTLE_TIMEOUT_S = 60.0


def settle() -> float:
    """Wait until the machine's CPU use stays under QUIET_CPU_PERCENT for a second; seconds waited
    (SETTLE_TIMEOUT_S at most)."""
    started = time.monotonic()
    while psutil.cpu_percent(interval=1.0) >= QUIET_CPU_PERCENT:
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            break
    return time.monotonic() - started


@dataclass
class Round:
    number: int
    order: List[str]
    alone_rps: float = math.nan
    alone_ttft_p50: float = math.nan
    during_rps: float = math.nan
    during_ttft_p50: float = math.nan
    during_ttft_p99: float = math.nan
    batch_rows_per_s: float = math.nan
    settled_s: float = 0.0  # the longest wait for a quiet machine before one of its measurements
    note: str = ""

    @property
    def ttft_ratio(self) -> float:
        return self.during_ttft_p50 / self.alone_ttft_p50

    @property
    def rps_ratio(self) -> float:
        return self.during_rps / self.alone_rps


def batch_worker_niceness(app_pid: Optional[int]) -> Set[int]:
    """The nice values of the threads of Ray Data's batch workers running now (started app only)."""
    values: Set[int] = set()
    if app_pid is None:
        return values
    for process in process_tree(app_pid):
        try:
            if " ".join(process.cmdline()).startswith(BATCH_WORKER_TITLES):
                values.update(thread_niceness(process))
        except psutil.Error:
            continue
    return values


def measure_alone(url: str, args, trial: Round) -> None:
    rps, ttfts = asyncio.run(online_load(url, args.online, args.concurrency))
    trial.alone_rps, trial.alone_ttft_p50 = rps, statistics.median(ttfts)


def measure_during(url: str, client: openai.OpenAI, args, trial: Round, app_pid: Optional[int],
                   niceness_seen: Set[int]) -> None:
    busy = start_batch(client, args.busy_rows, 100_000 * (trial.number + 1))
    try:
        while client.batches.retrieve(busy).request_counts.completed == 0:  # Ray Data is up, rows flow
            time.sleep(0.1)
        niceness_seen.update(batch_worker_niceness(app_pid))
        rps, ttfts = asyncio.run(online_load(url, args.online, args.concurrency))
        still = client.batches.retrieve(busy)
    finally:
        if client.batches.retrieve(busy).status in ("validating", "in_progress"):
            client.batches.cancel(busy)
        wait(client, busy, until=("completed", "failed", "cancelled", "expired"))
    if still.status != "in_progress":  # the batch ended before the load did: not a "during" trial
        trial.note = f"batch {still.status} before the online load ended; --busy-rows too small"
        return
    trial.during_rps, trial.during_ttft_p50 = rps, statistics.median(ttfts)
    trial.during_ttft_p99 = percentile(ttfts, 99)


def measure_batch(client: openai.OpenAI, args, trial: Round) -> None:
    started = time.perf_counter()
    batch = wait(client, start_batch(client, args.rows, 200_000 * (trial.number + 1)))
    elapsed = time.perf_counter() - started
    assert batch.status == "completed" and batch.request_counts.completed == args.rows, batch
    trial.batch_rows_per_s = args.rows / elapsed


COLUMNS = ("round", "order", "alone req/s", "alone TTFT p50", "during req/s", "during TTFT p50",
           "TTFT ratio", "req/s ratio", "batch rows/s", "settle")
WIDTHS = tuple(max(len(name), 18 if name == "order" else 0) for name in COLUMNS)


def print_round(trial: Round) -> None:
    cells = (f"{trial.number}", "/".join(trial.order), f"{trial.alone_rps:.1f}", f"{trial.alone_ttft_p50:.1f} ms",
             f"{trial.during_rps:.1f}", f"{trial.during_ttft_p50:.1f} ms", f"{trial.ttft_ratio:.2f}",
             f"{trial.rps_ratio:.2f}", f"{trial.batch_rows_per_s:.1f}", f"{trial.settled_s:.0f} s")
    print("  ".join(f"{cell:>{width}}" for cell, width in zip(cells, WIDTHS, strict=True))
          + (f"  ({trial.note})" if trial.note else ""), flush=True)


def summarize(rounds: List[Round]) -> None:
    def line(name: str, values: List[float], unit: str = "") -> None:
        interval = median_interval(values)
        print(f"  {name:<24} {interval}{unit}   (n={interval.n}, coverage {interval.coverage:.1%})")

    print("median of the rounds [distribution-free 95% interval of the median; with fewer than 6 rounds "
          "it is min..max, with the coverage shown]:")
    line("TTFT p50 ratio", [r.ttft_ratio for r in rounds])
    line("req/s ratio", [r.rps_ratio for r in rounds])
    line("online alone req/s", [r.alone_rps for r in rounds])
    line("online alone TTFT p50", [r.alone_ttft_p50 for r in rounds], " ms")
    line("online during req/s", [r.during_rps for r in rounds])
    line("online during TTFT p50", [r.during_ttft_p50 for r in rounds], " ms")
    line("online during TTFT p99", [r.during_ttft_p99 for r in rounds], " ms")
    line("batch alone rows/s", [r.batch_rows_per_s for r in rounds])


def run(url: str, args, app_pid: Optional[int] = None) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    asyncio.run(online_load(url, 8, args.concurrency))  # warm-up: the engines' first requests
    wait(client, start_batch(client, 8, 900_000))  # and Ray Data's first dataset
    print(f"{args.rounds} rounds of {args.online} online requests at concurrency {args.concurrency}; "
          f"batches of {args.rows} rows (alone) and {args.busy_rows} rows (during, cancelled after); each "
          f"measurement starts once CPU use is under {QUIET_CPU_PERCENT:.0f}% for a second (settle: the "
          f"round's longest wait, at most {SETTLE_TIMEOUT_S:.0f} s)", flush=True)
    print("  ".join(f"{name:>{width}}" for name, width in zip(COLUMNS, WIDTHS, strict=True)), flush=True)
    rounds: List[Round] = []
    niceness_seen: Set[int] = set()
    for number in range(args.rounds):
        trial = Round(number, round_order(["alone", "during", "batch"], number))
        for measurement in trial.order:
            trial.settled_s = max(trial.settled_s, settle())
            if measurement == "alone":
                measure_alone(url, args, trial)
            elif measurement == "during":
                measure_during(url, client, args, trial, app_pid, niceness_seen)
            else:
                measure_batch(client, args, trial)
        print_round(trial)
        rounds.append(trial)
    summarize(rounds)
    if app_pid is not None:
        print(f"nice values of Ray Data's batch worker threads seen during the batches: {sorted(niceness_seen)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure a running app at this base URL (needs `batch:` configured)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the three measurements")
    parser.add_argument("--online", type=int, default=80, help="online requests per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="online requests in flight")
    parser.add_argument("--rows", type=int, default=200, help="rows of the batch measured alone")
    parser.add_argument("--busy-rows", type=int, default=1000,
                        help="rows of the batch running during the online load (it must outlast the load)")
    parser.add_argument(
        "--engine-share", type=float, help="batch.engine_share of the started app (default: dev-cpu's)"
    )
    parser.add_argument(
        "--worker-niceness", type=int, help="batch.worker_niceness of the started app (default: the app's, 19)"
    )
    parser.add_argument(
        "--max-rows-per-s", type=float, help="batch.max_rows_per_s of the started app (default: none, unbounded)"
    )
    args = parser.parse_args()
    # The batch settings given on the command line, as the started app's batch.* keys.
    batch_settings = {key: value for key, value in (("engine_share", args.engine_share),
                                                    ("worker_niceness", args.worker_niceness),
                                                    ("max_rows_per_s", args.max_rows_per_s)) if value is not None}
    if args.url:
        if batch_settings:
            parser.error("--engine-share, --worker-niceness and --max-rows-per-s configure a started app; "
                         "not with --url")
        run(args.url, args)
        return 0
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        keys = work_dir / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "key": API_KEY}]}))
        app_args = dev_cpu_with_keys(keys)  # its Batch API store beside the keys file, in work_dir
        app_args["batch"].update(batch_settings)
        config = work_dir / "app.yaml"
        config.write_text(yaml.safe_dump(app_args))
        share = app_args["batch"]["engine_share"]
        niceness = app_args["batch"].get("worker_niceness", "(the app's default)")
        rate = app_args["batch"].get("max_rows_per_s", "none")
        print(f"starting llm-serving (dev-cpu with the Batch API, engine_share {share}, "
              f"worker_niceness {niceness}, max_rows_per_s {rate}) ...", flush=True)
        app = start_app(config, work_dir / "serve.log")
        try:
            run(app.base_url, args, app.process.pid)
        finally:
            app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
