"""Statistics of benchmarks/serving_overhead.py, kept apart from the servers so tests/unit can check
them: the distribution-free confidence interval of a median, the slow-mode classification of a
trial, and the pairing of two servers' trials by round into per-round ratios."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Optional, Sequence, Set, Tuple

CONFIDENCE = 0.95
# A streamed request arrived "in one piece" when all its chunks came within this share of its whole
# time (in the fast mode 16 tokens spread over ~75% of the request; coalesced, over ~0%).
COALESCED_SPREAD_SHARE = 0.2
# A non-streamed trial is in the slow mode when its req/s is below this share of the median of that
# server's trials at that concurrency (the issue saw 231 -> 38 req/s; ordinary noise is +-20%).
SLOW_THROUGHPUT_SHARE = 0.5

SLOW_MODE_DEFINITION = (
    f"slow trial = a streamed trial in which most requests arrived in one piece (all chunks within "
    f"{COALESCED_SPREAD_SHARE:.0%} of the request's time, i.e. gap ~0 and TTFT ~ whole request), or a "
    f"non-streamed trial below {SLOW_THROUGHPUT_SHARE:.0%} of that server's median req/s at that concurrency"
)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class MedianInterval:
    median: float
    low: float
    high: float
    coverage: float  # the interval's exact coverage (>= CONFIDENCE once n >= 6)
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(0, k + 1)) / 2**n


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> MedianInterval:
    """The median with its distribution-free order-statistic confidence interval: [x_(k), x_(n+1-k)]
    of the sorted values covers the true median with probability 1 - 2 P(Bin(n, 1/2) <= k-1), for
    any continuous distribution. k is the largest rank whose coverage is still >= `confidence`;
    below n = 6 no pair reaches 95%, so the interval is min..max and its coverage is printed."""
    ordered = sorted(v for v in values if not math.isnan(v))
    n = len(ordered)
    if n == 0:
        return MedianInterval(float("nan"), float("nan"), float("nan"), 0.0, 0)
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * _binomial_cdf(k, n) >= confidence:
        k += 1
    coverage = 1 - 2 * _binomial_cdf(k - 1, n)
    return MedianInterval(statistics.median(ordered), ordered[k - 1], ordered[n - k], coverage, n)


@dataclass
class StreamedRequest:
    ttft_ms: float
    total_ms: float
    chunk_times_ms: List[float]  # arrival of each chunk with a choice, from the request's start

    @property
    def gaps_ms(self) -> List[float]:
        return [b - a for a, b in zip(self.chunk_times_ms, self.chunk_times_ms[1:], strict=False)]

    @property
    def coalesced(self) -> bool:
        if len(self.chunk_times_ms) < 2 or self.total_ms <= 0:
            return False
        spread = self.chunk_times_ms[-1] - self.chunk_times_ms[0]
        return spread < COALESCED_SPREAD_SHARE * self.total_ms


@dataclass
class Trial:
    """One server's measurement at one concurrency in one round."""

    server: str
    round: int
    concurrency: int
    requests_per_s: float = float("nan")  # non-streamed
    latencies_ms: List[float] = field(default_factory=list)  # non-streamed, per request
    streamed: List[StreamedRequest] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""  # what the first failed request got, for the progress line
    # CPU time per answered request (non-streamed and streamed alike), by process of the server's tree
    # (process_label) and "load generator": where a path's time goes.
    cpu_ms_per_request: Dict[str, float] = field(default_factory=dict)

    @property
    def latency_p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def ttft_p50_ms(self) -> float:
        return percentile([r.ttft_ms for r in self.streamed], 50)

    @property
    def gap_p50_ms(self) -> float:
        return percentile([g for r in self.streamed for g in r.gaps_ms], 50)

    @property
    def coalesced(self) -> bool:
        """Most of the trial's streams arrived in one piece."""
        return bool(self.streamed) and 2 * sum(r.coalesced for r in self.streamed) > len(self.streamed)


def slow_trials(trials: Sequence[Trial]) -> List[Trial]:
    """The trials in the slow mode (SLOW_MODE_DEFINITION), of one server's trials at all
    concurrencies; the req/s threshold is per concurrency."""
    medians: Dict[int, float] = {}
    for concurrency in {t.concurrency for t in trials}:
        rates = [t.requests_per_s for t in trials if t.concurrency == concurrency and not math.isnan(t.requests_per_s)]
        medians[concurrency] = statistics.median(rates) if rates else float("nan")
    return [
        t for t in trials
        if t.coalesced or t.requests_per_s < SLOW_THROUGHPUT_SHARE * medians[t.concurrency]
    ]


def slow_rounds(trials: Sequence[Trial], concurrency: int) -> Set[int]:
    """The rounds in which one server's trial at `concurrency` was in the slow mode."""
    return {t.round for t in slow_trials(trials) if t.concurrency == concurrency}


def fast_rounds(first: Sequence[Trial], second: Sequence[Trial], concurrency: int) -> Set[int]:
    """The rounds in which both servers have a trial at `concurrency` and neither was in the slow
    mode: a ratio over these compares the servers as they run when the machine is not starving one
    (the slow-mode counts, printed per server, show whether one server falls into it more often)."""
    rounds = {t.round for t in first if t.concurrency == concurrency} & {
        t.round for t in second if t.concurrency == concurrency}
    return rounds - slow_rounds(first, concurrency) - slow_rounds(second, concurrency)


def _by_round(trials: Sequence[Trial], concurrency: int, metric: str,
              rounds: Optional[Collection[int]]) -> Dict[int, float]:
    """{round: the trial's `metric`} of one server's trials at `concurrency`, in `rounds` (None: all)."""
    return {t.round: getattr(t, metric) for t in trials
            if t.concurrency == concurrency and (rounds is None or t.round in rounds)}


def paired_ratios(numerator: Sequence[Trial], denominator: Sequence[Trial], concurrency: int,
                  metric: str = "requests_per_s", rounds: Optional[Collection[int]] = None) -> List[float]:
    """numerator/denominator of `metric`, one per round in which both servers have a trial at
    `concurrency` with a usable value (a round where either failed is left out, not guessed);
    `rounds`, when given, keeps only those rounds."""
    ours = _by_round(numerator, concurrency, metric, rounds)
    theirs = _by_round(denominator, concurrency, metric, rounds)
    ratios = []
    for round_ in sorted(ours.keys() & theirs.keys()):
        a, b = ours[round_], theirs[round_]
        if math.isnan(a) or math.isnan(b) or b <= 0:
            continue
        ratios.append(a / b)
    return ratios


def paired_differences(first: Sequence[Trial], second: Sequence[Trial], concurrency: int,
                       metric: str, rounds: Optional[Collection[int]] = None) -> List[float]:
    """first - second of `metric` per round, paired as paired_ratios pairs them."""
    a_by_round = _by_round(first, concurrency, metric, rounds)
    b_by_round = _by_round(second, concurrency, metric, rounds)
    return [a_by_round[r] - b_by_round[r] for r in sorted(a_by_round.keys() & b_by_round.keys())
            if not (math.isnan(a_by_round[r]) or math.isnan(b_by_round[r]))]


def round_order(servers: Sequence[str], round_: int, seed: Optional[int] = None) -> List[str]:
    """The servers' order in a round: rotated by one each round (every server takes every position
    equally often, so a warm-up or cool-down effect of a position hits all alike); with a seed,
    shuffled instead."""
    if seed is not None:
        import random

        order = list(servers)
        random.Random(seed * 100_003 + round_).shuffle(order)
        return order
    shift = round_ % len(servers) if servers else 0
    return list(servers[shift:]) + list(servers[:shift])


def ratio_pairs(servers: Sequence[str]) -> List[Tuple[str, str]]:
    """The ratios the issue asks for, of the servers present: the cost of the second engine (A2/A1),
    of the hop (A3/A1), of two models with the chat model direct (A4/A1), and with RAG and the Batch
    API on too (A5/A1), of our gateway (A1/B), of Ray Serve LLM (B/C), and the twin's self-check."""
    wanted = [("A2", "A1"), ("A3", "A1"), ("A4", "A1"), ("A5", "A1"), ("A1", "B"), ("A1", "C"), ("B", "C"),
              ("A1'", "A1")]
    present = set(servers)
    return [(a, b) for a, b in wanted if a in present and b in present]
