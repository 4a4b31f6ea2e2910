"""RAG on the CPU: ingestion throughput and query latency of the app's own RAG pipeline.

Starts `llm-serving serve` on values/dev-cpu.yaml plus `rag:` with a fresh Milvus Lite file (or
measures a running app with --url), then prints
  - ingestion: documents/s and chunks/s (chunk, embed with all-MiniLM-L6-v2, store),
  - retrieve only: latency of POST /v1/rag/collections/{name}/search (embed the query + search),
  - retrieve + generate: latency of a chat completion with `rag` (tiny-chat, 16 tokens), beside the
    same chat without `rag`, so the difference is what retrieval adds.
Run: .venv/bin/python benchmarks/rag.py [--documents 256] [--queries 40]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.dev_cpu import dev_cpu_with_keys  # noqa: E402
from tests.e2e.rag_corpus import DOCUMENTS, QUESTIONS  # noqa: E402
from tests.e2e.servers import start_app  # noqa: E402

API_KEY = "sk-benchmark-rag-0123456789"
COLLECTION = "bench"
CHAT_MODEL = "tiny-chat"


def synthetic_documents(count: int, seed: int = 0) -> List[dict]:
    """Documents of about 600 characters (two chunks of the app's default 800/100 settings at
    most), made of the corpus sentences in random order so embeddings differ."""
    rng = random.Random(seed)
    sentences = list(DOCUMENTS.values())
    documents = []
    for i in range(count):
        text = " ".join(rng.sample(sentences, 5))
        documents.append({"id": f"doc-{i}", "text": text, "metadata": {"n": i}})
    return documents


def summary(latencies_ms: List[float]) -> str:
    ordered = sorted(latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"p50 {statistics.median(ordered):7.1f} ms   p99 {p99:7.1f} ms   (n={len(ordered)})"


async def ingest(client: httpx.AsyncClient, documents: List[dict], batch: int, concurrency: int):
    batches = [documents[i : i + batch] for i in range(0, len(documents), batch)]
    queue = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)
    chunks = 0

    async def worker():
        nonlocal chunks
        while not queue.empty():
            item = queue.get_nowait()
            response = await client.post(f"/v1/rag/collections/{COLLECTION}/documents", json={"documents": item})
            response.raise_for_status()
            chunks += sum(d["chunks"] for d in response.json()["data"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, chunks


async def timed(call) -> float:
    started = time.perf_counter()
    response = await call()
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def run(url: str, api_key: str, args) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {api_key}"}, timeout=300) as client:
        await client.delete(f"/v1/rag/collections/{COLLECTION}")
        (await client.post("/v1/rag/collections", json={"name": COLLECTION})).raise_for_status()
        documents = synthetic_documents(args.documents)
        await ingest(client, documents[:16], 16, 1)  # warm-up (first embeddings, first Milvus segment)
        seconds, chunks = await ingest(client, documents, args.batch, args.concurrency)
        print(f"ingestion   {len(documents)} documents in {seconds:.1f} s: {len(documents) / seconds:7.1f} documents/s, "
              f"{chunks / seconds:7.1f} chunks/s (requests of {args.batch}, concurrency {args.concurrency})")

        questions = [q for q, _ in QUESTIONS]
        queries = [questions[i % len(questions)] for i in range(args.queries)]
        search = [await timed(lambda q=q: client.post(f"/v1/rag/collections/{COLLECTION}/search", json={"query": q, "top_k": 4}))
                  for q in queries]
        print(f"retrieve only (embed query + top-4 search):        {summary(search)}")

        def chat(q, rag):
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": q}], "max_tokens": 16,
                    "temperature": 0}
            if rag:
                body["rag"] = {"collection": COLLECTION, "top_k": 2}
            return lambda: client.post("/v1/chat/completions", json=body)

        plain = [await timed(chat(q, False)) for q in queries[: args.chats]]
        augmented = [await timed(chat(q, True)) for q in queries[: args.chats]]
        print(f"generate only (chat, 16 tokens, no rag):           {summary(plain)}")
        print(f"retrieve + generate (chat with rag, top_k 2):      {summary(augmented)}")
        print(f"retrieval adds (p50): {statistics.median(augmented) - statistics.median(plain):.1f} ms")
        await client.delete(f"/v1/rag/collections/{COLLECTION}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure a running app at this base URL (needs `rag:` configured)")
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="documents per ingestion request")
    parser.add_argument("--concurrency", type=int, default=2, help="ingestion requests in flight")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--chats", type=int, default=20)
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.api_key, args))
        return 0
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        keys = work / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "key": API_KEY}]}))
        app_args = dev_cpu_with_keys(keys)  # its Batch API store too is in this run's folder
        # tiny-chat has a 512-token window; all-MiniLM-L6-v2 reads 256 tokens (about 800 characters).
        app_args["rag"] = {"store": {"uri": str(work / "milvus.db")}, "max_context_chars": 300}
        config = work / "app.yaml"
        config.write_text(yaml.safe_dump(app_args))
        print("starting llm-serving (dev-cpu + rag, Milvus Lite) ...", flush=True)
        app = start_app(config, work / "serve.log")
        try:
            asyncio.run(run(app.base_url, API_KEY, args))
        finally:
            app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
