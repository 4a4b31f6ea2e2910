"""The variant-choice policy, directly: split by weight, stickiness, and what a weight change moves."""

import random

import pytest

from llm_serving.gateway.routing import (
    AliasTable,
    WeightedVariants,
    caller_identity,
    choose_variant,
    identity_point,
)

N = 20_000
# Binomial standard deviation of a 10% share over 20,000 draws is 0.21 points; 1 point is ~5 sigma.
TOLERANCE = 0.01


def shares(picks):
    return {name: picks.count(name) / len(picks) for name in set(picks)}


def test_identities_split_by_weight_within_tolerance():
    variants = WeightedVariants.from_weights({"v1": 90, "v2": 10})
    picks = [choose_variant(variants, "chat", f"user-{i}") for i in range(N)]
    assert shares(picks)["v1"] == pytest.approx(0.9, abs=TOLERANCE)
    assert shares(picks)["v2"] == pytest.approx(0.1, abs=TOLERANCE)


def test_requests_without_identity_are_spread_by_weight():
    variants = WeightedVariants.from_weights({"a": 1, "b": 1, "c": 2})
    rng = random.Random(7)
    picks = [choose_variant(variants, "chat", None, random_point=rng.random) for _ in range(N)]
    assert shares(picks) == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5}, abs=TOLERANCE)


def test_the_same_identity_always_gets_the_same_variant():
    variants = WeightedVariants.from_weights({"v1": 50, "v2": 50})
    for i in range(200):
        first = choose_variant(variants, "chat", f"session-{i}")
        assert all(choose_variant(variants, "chat", f"session-{i}") == first for _ in range(5))
    # ... and it does not depend on the order the weights were written in.
    reordered = WeightedVariants.from_weights({"v2": 50, "v1": 50})
    assert all(choose_variant(variants, "chat", f"s{i}") == choose_variant(reordered, "chat", f"s{i}")
               for i in range(500))


def test_a_weight_change_moves_only_the_expected_share():
    before = WeightedVariants.from_weights({"v1": 90, "v2": 10})
    after = WeightedVariants.from_weights({"v1": 80, "v2": 20})
    ids = [f"user-{i}" for i in range(N)]
    moved = [i for i in ids if choose_variant(before, "chat", i) != choose_variant(after, "chat", i)]
    assert len(moved) / N == pytest.approx(0.10, abs=TOLERANCE)
    # Everyone who moved went v1 -> v2: nobody already on the canary is sent back.
    assert all(choose_variant(before, "chat", i) == "v1" and choose_variant(after, "chat", i) == "v2" for i in moved)


def test_zero_weight_takes_a_variant_out_of_rotation():
    variants = WeightedVariants.from_weights({"v1": 100, "v2": 0})
    assert {choose_variant(variants, "chat", f"u{i}") for i in range(1000)} == {"v1"}


def test_aliases_hash_independently():
    # The same caller is not always on the canary of every alias.
    points = [(identity_point("a", f"u{i}"), identity_point("b", f"u{i}")) for i in range(1000)]
    assert sum(1 for a, b in points if (a < 0.1) == (b < 0.1)) < 950


def test_identity_sources_in_the_configured_order():
    headers = {"x-session-id": "abc"}
    sources = ["header:x-session-id", "user", "api_key"]
    assert caller_identity(sources, headers.get, "alice", "team-a") == "header:x-session-id=abc"
    assert caller_identity(sources, {}.get, "alice", "team-a") == "user=alice"
    assert caller_identity(sources, {}.get, None, "team-a") == "api_key=team-a"
    assert caller_identity(sources, {}.get, {"not": "a string"}, None) is None
    assert caller_identity(["api_key", "user"], headers.get, "alice", "team-a") == "api_key=team-a"


def test_alias_table():
    table = AliasTable({"chat": {"v1": 9, "v2": 1}})
    assert "chat" in table and "v1" not in table
    assert table.names == ["chat"] and table.all_variants() == ["v1", "v2"]
    assert not AliasTable({})
