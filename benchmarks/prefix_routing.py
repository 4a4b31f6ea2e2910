"""Prefix-cache-aware routing on the CPU: time to first token of shared-prefix traffic with Ray Serve
LLM's PrefixCacheAffinityRouter against Serve's default power-of-two router, in one run.

One `llm-serving serve` instance serves the tiny model twice, each copy on two engine replicas:
`tiny-affinity` (request_router.policy: prefix_cache_affinity) and `tiny-default` (power_of_two).
The traffic is what the router is for: GROUPS conversations, each with its own long system prompt
(about PREFIX_TOKENS tokens), taking turns for ROUNDS rounds (g1 g2 ... gN, g1 g2 ...). Each request
goes to both models back to back, in alternating order, so a drift in the machine's speed hits both
alike. With affinity a conversation's prompt is prefilled once, on the replica that keeps it; spread
at random, most conversations are prefilled on both replicas (each engine's 1 GiB KV cache holds
every prompt here, so this counts those second prefills only; on a GPU, where many conversations
compete for the cache, spreading also makes each replica's cache turn over).

It prints TTFT p50 (and mean) per router, their ratio, and vLLM's prefix-cache hit rate per model
from Ray's metrics endpoint. Not part of `make bench`; run it by hand (with PYTHONPATH=image/src
from a worktree):
    .venv/bin/python benchmarks/prefix_routing.py [--groups 8] [--rounds 3] [--one-router-at-a-time]
Four tiny engines need about 10 GiB; --one-router-at-a-time runs two at a time, one router after
the other on the same traffic (then a drift in the machine's speed is not shared).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import openai
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.servers import scrape, start_app  # noqa: E402

AFFINITY, DEFAULT = "tiny-affinity", "tiny-default"
PREFIX_TOKENS = 1000
MAX_MODEL_LEN = 2048


def tiny_model(policy: str) -> dict:
    return {
        "source": "builtin://tiny-chat",
        "device": "cpu",
        "max_model_len": MAX_MODEL_LEN,
        "engine_kwargs": {
            "enforce_eager": True,
            "dtype": "float32",
            "enable_prefix_caching": True,
        },
        "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "request_router": {"policy": policy},
    }


def system_prompts(groups: int, seed: int = 0) -> List[str]:
    """One distinct prompt per conversation, about PREFIX_TOKENS tokens of the tiny model's
    tokenizer (made offline by llm_serving.builtin_models)."""
    from transformers import AutoTokenizer

    from llm_serving.builtin_models import tiny_chat_path

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_path()))
    words = "ray serve model tokens gateway routes cache prefix replica engine answer question brief".split()
    rng = random.Random(seed)
    prompts = []
    for group in range(groups):
        text = f"Conversation {group}."
        while len(tokenizer(text)["input_ids"]) < PREFIX_TOKENS:
            text += " " + " ".join(rng.choice(words) for _ in range(20))
        prompts.append(text)
    return prompts


def time_to_first_token_ms(client: openai.OpenAI, model: str, system: str, question: str) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, max_tokens=2, temperature=0, stream=True,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    first = None
    for _ in stream:  # vLLM sends its first chunk once the prompt is prefilled
        if first is None:
            first = time.perf_counter()
    assert first is not None, f"{model} streamed nothing"
    return (first - started) * 1000


def prefix_cache(app, model: str) -> Dict[str, float]:
    """vLLM's prefix-cache counters of one model, summed over its replicas."""
    totals = {"hits": 0.0, "queries": 0.0}
    for (name, labels), value in scrape(app).items():
        if name.startswith("ray_vllm") and dict(labels).get("model_name") == model:
            for kind in totals:
                if name.endswith(f"prefix_cache_{kind}_total"):
                    totals[kind] += value
    return totals


def measure(policies: Dict[str, str], prompts: List[str], rounds: int) -> Dict[str, dict]:
    """Serve one copy of the tiny model per router on one instance and send them the same traffic,
    interleaved; per model: its TTFTs (ms) and the growth of its prefix-cache counters."""
    work = Path(tempfile.mkdtemp(prefix="bench-prefix-routing-"))
    config = work / "app.yaml"
    models = {model: tiny_model(policy) for model, policy in policies.items()}
    config.write_text(yaml.safe_dump({"models": models, "gateway": {"auth": {"mode": "none"}}}))
    print(f"starting llm-serving ({len(models)} model(s) x 2 CPU engine replicas; logs in {work}) ...", flush=True)
    app = start_app(config, work / "serve.log")
    try:
        client = openai.OpenAI(base_url=app.api_url, api_key="unused", max_retries=0, timeout=300)
        for model in models:  # first requests pay for warm-up, not for routing
            time_to_first_token_ms(client, model, "warm up", "hello")
        before = {model: prefix_cache(app, model) for model in models}
        ttft: Dict[str, List[float]] = {model: [] for model in models}
        turn = 0
        for round_ in range(rounds):
            for prompt in prompts:
                order = list(models) if turn % 2 == 0 else list(reversed(models))
                for model in order:
                    ttft[model].append(time_to_first_token_ms(client, model, prompt, f"Turn {round_}: and then?"))
                turn += 1
        time.sleep(15)  # Ray's metrics agent exports on an interval
        after = {model: prefix_cache(app, model) for model in models}
    finally:
        app.stop()
    return {
        model: {"ttft": ttft[model], **{kind: after[model][kind] - before[model][kind] for kind in ("hits", "queries")}}
        for model in models
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=8, help="conversations, each with its own long prefix")
    parser.add_argument("--rounds", type=int, default=3, help="turns per conversation")
    parser.add_argument(
        "--one-router-at-a-time", action="store_true",
        help="two engines at a time (one instance per router, same traffic) for machines that cannot hold four",
    )
    args = parser.parse_args()

    prompts = system_prompts(args.groups)
    policies = {AFFINITY: "prefix_cache_affinity", DEFAULT: "power_of_two"}
    if args.one_router_at_a_time:
        results = {}
        for model, policy in policies.items():
            results.update(measure({model: policy}, prompts, args.rounds))
        how = "one router at a time (not interleaved)"
    else:
        results = measure(policies, prompts, args.rounds)
        how = "both routers in one instance, requests interleaved"

    print(f"\n{args.groups} conversations x {args.rounds} turns, ~{PREFIX_TOKENS}-token system prompts, "
          f"2 engines per router, one request at a time; {how}")
    print(f"{'router':<24}{'TTFT p50 ms':>12}{'mean ms':>10}{'prefix-cache hit rate':>24}")
    for model, label in ((AFFINITY, "prefix_cache_affinity"), (DEFAULT, "power_of_two (default)")):
        result = results[model]
        rate = f"{result['hits'] / result['queries']:.0%}" if result["queries"] else "n/a"
        print(f"{label:<24}{statistics.median(result['ttft']):>12.1f}{statistics.fmean(result['ttft']):>10.1f}{rate:>24}")
    ratio = statistics.median(results[AFFINITY]["ttft"]) / statistics.median(results[DEFAULT]["ttft"])
    print(f"TTFT p50 ratio affinity/default: {ratio:.2f} (below 1: affinity is faster)")


if __name__ == "__main__":
    main()
