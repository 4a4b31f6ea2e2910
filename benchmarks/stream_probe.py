"""Issue 17's streaming check: how 64-token chat streams reach keep-alive clients, read by read.

    benchmarks/stream_probe.py http://127.0.0.1:8000 --key sk-... [--runs 4] [--clients aiohttp_any,httpx_raw]

Against any running server (vLLM's own, `llm-serving serve` on either path): per stream, the time
to the first read, the reads and the distinct read times (more than 0.5 ms apart), the span, the
most events one read held, and (from continuous usage stats) the most tokens one event held.
Clients, interleaved, each on one keep-alive connection: aiohttp iter_any and readline, httpx
aiter_raw and aiter_lines, and a plain socket (HTTP/1.1 by hand: what the kernel hands over).
Run `tcpdump -i lo -w x.pcap port <HAProxy port> or port <replica port>` beside it to see what each
hop sent; in issue 17 the replica wrote one segment per event and the merging was the reader's.
logprobs is on: under ignore_eos the tiny model loops on its end-of-sequence token, which decodes to
"", and vLLM sends no event for an empty delta without logprobs.
"""
import argparse
import asyncio
import json
import re
import socket
import statistics
import time

import aiohttp
import httpx

BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Tell me about Ray Serve and vLLM."}],
        "max_tokens": 64, "temperature": 0, "ignore_eos": True, "stream": True, "logprobs": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


def tokens_in(data):
    found = TOKENS.findall(data)
    return int(found[-1]) if found else None


def summarize(start, reads):
    """reads: [(time, bytes read, events in them, the data)], one per read."""
    times = [t - start for t, n, e, _ in reads if n]
    events = sum(e for _, _, e, _ in reads)
    distinct = 1 + sum(1 for a, b in zip(times, times[1:]) if b - a > 0.0005) if times else 0
    per_event = [int(x) for x in TOKENS.findall(b"".join(r[3] for r in reads))]
    tok_per_event = max((b - a for a, b in zip(per_event, per_event[1:])), default=0)
    at_read = [tokens_in(r[3]) for r in reads]
    at_read = [x for x in at_read if x is not None]
    tok_per_read = max((b - a for a, b in zip([0] + at_read, at_read)), default=0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft_ms": times[0] * 1e3 if times else None, "reads": len(times), "distinct": distinct,
            "span_ms": (times[-1] - times[0]) * 1e3 if times else None, "events": events,
            "max_events_in_one_read": max((e for _, _, e, _ in reads), default=0),
            "median_gap_ms": statistics.median(gaps) * 1e3 if gaps else 0.0,
            "tok_per_event": tok_per_event, "tok_per_read": tok_per_read, "tokens": per_event[-1] if per_event else 0}


async def aiohttp_stream(session, url, headers, mode):
    reads = []
    start = time.perf_counter()
    async with session.post(url, json=BODY, headers=headers) as response:
        assert response.status == 200, await response.text()
        if mode == "any":
            async for data in response.content.iter_any():
                reads.append((time.perf_counter(), len(data), data.count(b"data:"), data))
        else:
            async for line in response.content:
                if line.strip():
                    reads.append((time.perf_counter(), len(line), line.count(b"data:"), line))
    return summarize(start, reads)


async def httpx_stream(client, url, headers, mode):
    reads = []
    start = time.perf_counter()
    async with client.stream("POST", url, json=BODY, headers=headers) as response:
        assert response.status_code == 200
        if mode == "raw":
            async for data in response.aiter_raw():
                reads.append((time.perf_counter(), len(data), data.count(b"data:"), data))
        else:
            async for line in response.aiter_lines():
                if line.strip():
                    reads.append((time.perf_counter(), len(line), line.count("data:"), line.encode()))
    return summarize(start, reads)


class RawSocket:
    """One keep-alive HTTP/1.1 connection, read with recv() as bytes arrive (chunked encoding)."""

    def __init__(self, base_url, key):
        host, port = base_url.split("//")[1].split(":")
        self.host, self.port, self.key = host, int(port), key
        self.sock = None

    def stream(self):
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = json.dumps(BODY).encode()
        request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   + (f"Authorization: Bearer {self.key}\r\n" if self.key else "") + "\r\n").encode() + body
        reads = []
        start = time.perf_counter()
        self.sock.sendall(request)
        buffer = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                self.sock = None
                break
            reads.append((time.perf_counter(), len(data), data.count(b"data:"), data))
            buffer += data
            if buffer.endswith(b"0\r\n\r\n") and b"[DONE]" in buffer:
                break
        return summarize(start, reads)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--key", default="")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--clients", default="aiohttp_any,aiohttp_lines,httpx_raw,httpx_lines,raw_socket")
    parser.add_argument("--model", default="tiny-chat")
    args = parser.parse_args()
    BODY["model"] = args.model
    url = f"{args.base_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
    clients = args.clients.split(",")
    results = {c: [] for c in clients}
    raw = RawSocket(args.base_url, args.key)
    async with aiohttp.ClientSession() as session, httpx.AsyncClient(timeout=60) as client:
        for run in range(args.runs + 1):  # run 0 warms every client's connection
            for name in clients:
                if name == "aiohttp_any":
                    r = await aiohttp_stream(session, url, headers, "any")
                elif name == "aiohttp_lines":
                    r = await aiohttp_stream(session, url, headers, "lines")
                elif name == "httpx_raw":
                    r = await httpx_stream(client, url, headers, "raw")
                elif name == "httpx_lines":
                    r = await httpx_stream(client, url, headers, "lines")
                else:
                    r = await asyncio.to_thread(raw.stream)
                if run:
                    results[name].append(r)
    print(f"{'client':14} {'ttft_ms':>8} {'reads':>6} {'distinct':>8} {'span_ms':>8} {'gap_ms':>7} {'max_ev/read':>11} {'tok/event':>9} {'tok/read':>8} {'tokens':>6}")
    for name, rs in results.items():
        for r in rs:
            print(f"{name:14} {r['ttft_ms']:8.1f} {r['reads']:6d} {r['distinct']:8d} {r['span_ms']:8.1f} "
                  f"{r['median_gap_ms']:7.2f} {r['max_events_in_one_read']:11d} {r['tok_per_event']:9d} {r['tok_per_read']:8d} {r['tokens']:6d}")


if __name__ == "__main__":
    asyncio.run(main())
