"""The Batch API on the CPU: batch rows/s next to online requests/s on the same engine, and what a
running batch does to online latency.

Starts `llm-serving serve` on values/dev-cpu.yaml (which enables the Batch API) with a fresh store
(or measures a running app with --url), then prints
  - online alone: requests/s and time-to-first-token p50/p99 of streamed chats (tiny-chat,
    16 tokens) at a fixed concurrency,
  - batch alone: rows/s of a chat batch of the same requests (create to completed),
  - online during a batch: the same online load while a larger batch runs, and the TTFT p50 ratio
    (with / without), the number batch.engine_share is there to keep small.
Run by hand (make bench does not run it: it takes a few minutes):
  .venv/bin/python benchmarks/batch.py [--online 80] [--concurrency 4] [--rows 400] [--engine-share 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import httpx
import openai
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.dev_cpu import dev_cpu_with_keys  # noqa: E402
from tests.e2e.servers import start_app  # noqa: E402

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


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


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


def run(url: str, args) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    asyncio.run(online_load(url, 8, args.concurrency))  # warm-up
    rps, alone = asyncio.run(online_load(url, args.online, args.concurrency))
    print(f"online alone        {rps:7.1f} requests/s   TTFT p50 {statistics.median(alone):6.1f} ms   "
          f"p99 {percentile(alone, 0.99):6.1f} ms   (n={len(alone)}, concurrency {args.concurrency})", flush=True)

    started = time.perf_counter()
    batch = wait(client, start_batch(client, args.rows, 0))
    elapsed = time.perf_counter() - started
    assert batch.status == "completed" and batch.request_counts.completed == args.rows, batch
    print(f"batch alone         {args.rows / elapsed:7.1f} rows/s       ({args.rows} rows in {elapsed:.1f} s, "
          f"create to completed)", flush=True)

    # A batch big enough to outlast the online load, running before the load starts.
    busy = start_batch(client, args.rows * 4, 100_000)
    wait(client, busy, until=("in_progress",))
    while client.batches.retrieve(busy).request_counts.completed == 0:
        time.sleep(0.1)
    rps_during, during = asyncio.run(online_load(url, args.online, args.concurrency))
    still_running = client.batches.retrieve(busy)
    print(f"online during batch {rps_during:7.1f} requests/s   TTFT p50 {statistics.median(during):6.1f} ms   "
          f"p99 {percentile(during, 0.99):6.1f} ms   (batch still {still_running.status}, "
          f"{still_running.request_counts.completed} rows done)", flush=True)
    print(f"TTFT p50 ratio (during / alone): {statistics.median(during) / statistics.median(alone):.2f}   "
          f"throughput ratio: {rps_during / rps:.2f}", flush=True)
    client.batches.cancel(busy)
    wait(client, busy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure a running app at this base URL (needs `batch:` configured)")
    parser.add_argument("--online", type=int, default=80, help="online requests per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="online requests in flight")
    parser.add_argument("--rows", type=int, default=400, help="rows of the measured batch")
    parser.add_argument(
        "--engine-share", type=float, help="batch.engine_share of the started app (default: dev-cpu's)"
    )
    args = parser.parse_args()
    if args.url:
        run(args.url, args)
        return 0
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        keys = work_dir / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "key": API_KEY}]}))
        app_args = dev_cpu_with_keys(keys)  # its Batch API store beside the keys file, in work_dir
        if args.engine_share is not None:
            app_args["batch"]["engine_share"] = args.engine_share
        config = work_dir / "app.yaml"
        config.write_text(yaml.safe_dump(app_args))
        share = app_args["batch"]["engine_share"]
        print(f"starting llm-serving (dev-cpu with the Batch API, engine_share {share}) ...", flush=True)
        app = start_app(config, work_dir / "serve.log")
        try:
            run(app.base_url, args)
        finally:
            app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
