"""The statistics of benchmarks/serving_overhead.py (benchmarks/trial_stats.py), without servers."""

import math
import random

import pytest
from benchmarks.trial_stats import (
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
from benchmarks.serving_overhead import cpu_split, process_label


def test_median_interval_takes_the_order_statistics_of_the_binomial():
    # n = 20: P(Bin(20, 1/2) <= 5) = 0.0207, so [x_(6), x_(15)] covers with 95.9%;
    # [x_(7), x_(14)] would cover only 88.5%.
    values = list(range(1, 21))
    random.Random(1).shuffle(values)
    interval = median_interval(values)
    assert (interval.median, interval.low, interval.high, interval.n) == (10.5, 6, 15, 20)
    assert interval.coverage == pytest.approx(0.9586, abs=1e-4)


def test_median_interval_below_six_values_is_the_range_with_its_lower_coverage():
    interval = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (interval.low, interval.median, interval.high) == (1.0, 3.0, 5.0)
    assert interval.coverage == pytest.approx(1 - 2 / 32)
    assert median_interval([]).n == 0 and math.isnan(median_interval([]).median)


def test_median_interval_covers_the_true_median_at_least_95_percent_of_the_time():
    rng = random.Random(7)
    # A skewed, bimodal distribution like the machine's (fast mode and, 20% of the time, slow mode);
    # its true median is the fast mode's median, 100.
    covered = 0
    for _ in range(2000):
        sample = [rng.gauss(100, 5) if rng.random() < 0.8 else rng.gauss(30, 5) for _ in range(15)]
        true_median = _bimodal_median()
        interval = median_interval(sample)
        covered += interval.low <= true_median <= interval.high
    assert covered / 2000 >= 0.94  # nominal >= 96.5% at n = 15; a little Monte Carlo slack


def _bimodal_median() -> float:
    # Solve 0.8 * Phi((m - 100) / 5) + 0.2 * Phi((m - 30) / 5) = 0.5 by bisection.
    def cdf(m: float) -> float:
        def phi(z: float) -> float:
            return 0.5 * (1 + math.erf(z / math.sqrt(2)))

        return 0.8 * phi((m - 100) / 5) + 0.2 * phi((m - 30) / 5)

    low, high = 30.0, 130.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < 0.5 else (low, mid)
    return low


def streamed(ttft: float, gap: float, tokens: int = 16) -> StreamedRequest:
    chunks = [ttft + i * gap for i in range(tokens)]
    return StreamedRequest(ttft_ms=ttft, total_ms=chunks[-1] + 1, chunk_times_ms=chunks)


def test_a_stream_that_arrives_in_one_piece_is_coalesced_and_one_token_by_token_is_not():
    assert streamed(ttft=25, gap=0.0).coalesced
    assert not streamed(ttft=5, gap=1.0).coalesced
    trial = Trial("A1", 0, 1, streamed=[streamed(25, 0.0), streamed(25, 0.0), streamed(5, 1.0)])
    assert trial.coalesced and trial.ttft_p50_ms == 25 and trial.gap_p50_ms == 0.0
    assert not Trial("A1", 0, 1, streamed=[streamed(25, 0.0), streamed(5, 1.0)]).coalesced  # half is not most


def test_slow_trials_are_coalesced_streams_or_far_below_the_servers_median_at_that_concurrency():
    rates = [230, 227, 210, 240]
    fast = [Trial("C", r, 8, requests_per_s=rate, streamed=[streamed(5, 1.0)]) for r, rate in enumerate(rates)]
    slow_rate = Trial("C", 4, 8, requests_per_s=38, streamed=[streamed(5, 1.0)])
    slow_stream = Trial("C", 5, 8, requests_per_s=220, streamed=[streamed(26, 0.0)])
    at_c1 = Trial("C", 0, 1, requests_per_s=48, streamed=[streamed(5, 1.0)])  # its own median: not slow
    assert slow_trials([*fast, slow_rate, slow_stream, at_c1]) == [slow_rate, slow_stream]


def test_ratios_pair_the_trials_of_one_round_and_skip_rounds_where_either_is_missing():
    ours = [Trial("A2", 0, 1, requests_per_s=30), Trial("A2", 1, 1, requests_per_s=20),
            Trial("A2", 2, 1, requests_per_s=33), Trial("A2", 0, 8, requests_per_s=80)]
    base = [Trial("A1", 0, 1, requests_per_s=40), Trial("A1", 2, 1, requests_per_s=float("nan")),
            Trial("A1", 3, 1, requests_per_s=39), Trial("A1", 1, 1, requests_per_s=25),
            Trial("A1", 0, 8, requests_per_s=160)]
    assert paired_ratios(ours, base, 1) == [0.75, 0.8]  # rounds 0 and 1; round 2's A1 failed, round 3 has no A2
    assert paired_ratios(ours, base, 8) == [0.5]
    ours_ttft = [Trial("A2", 0, 1, streamed=[streamed(9, 1.0)]), Trial("A2", 1, 1, streamed=[streamed(12, 1.0)])]
    base_ttft = [Trial("A1", 1, 1, streamed=[streamed(10, 1.0)]), Trial("A1", 0, 1, streamed=[streamed(7, 1.0)])]
    assert paired_differences(ours_ttft, base_ttft, 1, "ttft_p50_ms") == [2.0, 2.0]


def test_fast_rounds_leave_out_a_round_where_either_server_was_slow_and_ratios_can_keep_only_those():
    ours = [Trial("A2", r, 8, requests_per_s=rate, streamed=[streamed(5, 1.0)])
            for r, rate in enumerate([100, 90, 95, 20, 100])]
    ours[1].streamed = [streamed(26, 0.0)]  # round 1: A2's streams came in one piece
    base = [Trial("A1", r, 8, requests_per_s=rate, streamed=[streamed(5, 1.0)])
            for r, rate in enumerate([100, 100, 100, 100, 30])]  # round 4: A1 far below its median
    base.append(Trial("A1", 5, 8, requests_per_s=100))  # round 5: no A2 trial
    assert fast_rounds(ours, base, 8) == {0, 2}  # round 3: A2 at 20 is below half its median of 95
    assert paired_ratios(ours, base, 8, rounds={0, 2}) == [1.0, 0.95]
    assert paired_differences(ours, base, 8, "ttft_p50_ms", rounds={2}) == [0.0]
    assert fast_rounds(ours, base, 1) == set()


class _Process:  # what process_label reads of a psutil.Process
    def __init__(self, *args: str):
        self.args = list(args)

    def cmdline(self):
        return self.args

    def name(self):
        return "kworker"


def test_processes_are_labelled_by_title_or_program_and_their_cpu_is_taken_per_process():
    assert process_label(_Process("ray::ServeController.listen_for_change")) == "ray::ServeController"
    assert process_label(_Process("ray::ServeReplica:app:LLMServer:llama-3.1-8b")) == \
        "ray::ServeReplica:app:LLMServer:llama-3.1-8b"
    assert process_label(_Process("VLLM::EngineCore")) == "VLLM::EngineCore"
    assert process_label(_Process("/venv/bin/python3", "-u", "/ray/_private/log_monitor.py", "--x")) == "log_monitor.py"
    assert process_label(_Process("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")) == \
        "vllm.entrypoints.openai.api_server"
    assert process_label(_Process("/usr/sbin/haproxy", "-f", "cfg")) == "haproxy"
    assert process_label(_Process()) == "kworker"
    # pid 1 changed its title (counted by its own delta), pid 2 ended, pid 3 started during the trial.
    before = {1: ("ray::ServeController", 5.0), 2: ("raylet", 1.0)}
    after = {1: ("ray::ServeController.listen_for_change", 5.5), 3: ("raylet", 0.2)}
    assert cpu_split(before, after, 10) == {"ray::ServeController.listen_for_change": 50.0, "raylet": 20.0}
    assert cpu_split(before, after, 0) == {}


def test_round_order_gives_every_server_every_position_and_the_pairs_present():
    servers = ["C", "B", "A1"]
    orders = [round_order(servers, r) for r in range(3)]
    assert orders == [["C", "B", "A1"], ["B", "A1", "C"], ["A1", "C", "B"]]
    assert sorted(round_order(servers, 4, seed=3)) == sorted(servers)
    assert ratio_pairs(["C", "B", "A1", "A1'"]) == [("A1", "B"), ("A1", "C"), ("B", "C"), ("A1'", "A1")]
    assert ratio_pairs(["A1", "A4"]) == [("A4", "A1")]
