"""Every profile's models place on its worker nodes, in every join order, at min and max size
(tests/cluster_fit/placement.py simulates Ray's placement of the real rendered chart and app config)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest

from llm_serving.app import to_llm_config
from llm_serving.config import parse_app_config
from tests.cluster_fit import placement
from tests.cluster_fit.placement import PROFILES, render_profile, simulate_profile

MULTI_MODEL = next(p for p in PROFILES if p.stem == "multi-model-gateway")


@pytest.fixture(scope="module")
def simulations():
    return {profile.stem: simulate_profile(profile) for profile in PROFILES}


def describe(outcome: placement.Outcome) -> str:
    return (
        f"groups joined {' then '.join(outcome.join_order)}, requests in order {list(outcome.request_order)}: "
        f"placed {outcome.placed}, pending {outcome.pending}, free GPUs {outcome.free_gpus}"
    )


@pytest.mark.parametrize("size", ["min", "max"])
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_model_places_in_every_order_and_no_gpu_is_stranded(simulations, profile: Path, size: str):
    result = simulations[profile.stem][size]
    assert result.outcomes, "no scenario was simulated"
    for outcome in result.failures[:1] + result.stranding[:1]:
        pytest.fail(f"{profile.stem} at {size}Replicas: {describe(outcome)}")
    expected = sorted(r.model for r in result.requests)
    for outcome in result.outcomes:
        assert sorted(model for model, _, _ in outcome.placed) == expected


def test_multi_model_gateway_ties_each_model_to_its_group(simulations):
    for size in ("min", "max"):
        for outcome in simulations["multi-model-gateway"][size].outcomes:
            groups = {model: group for model, group, _ in outcome.placed}
            assert groups == {
                "llama-3.3-70b-instruct": "l40s-4x",
                "llama-3.1-8b-instruct": "l40s-1x",
                "bge-large-en-v1.5": "l40s-1x",
            }, describe(outcome)


def test_without_the_tie_multi_model_gateway_can_deadlock():
    """Issue 13 item 2, as the profile stood: both groups advertise accelerator_type:L40S and the
    bundles ask only for a GPU and that type, so when the 4-GPU pod joins first a 1-GPU model can
    take one of its GPUs and the 70B model (STRICT_PACK, 4 GPUs, one such pod) never places."""
    _, args = render_profile(MULTI_MODEL)
    untied = copy.deepcopy(args)
    for model in untied["models"].values():
        model.pop("worker_group", None)
    for size in ("min", "max"):
        result = simulate_profile(MULTI_MODEL, args_override=untied)[size]
        stuck = [o for o in result.failures if "llama-3.3-70b-instruct" in o.pending]
        assert stuck, f"expected a deadlock at {size}Replicas without worker_group"
        assert any(o.join_order[0] == "l40s-4x" for o in stuck)
        # The same profile with the tie places in every order (test above); the tie is the fix.
        assert all(o.ok for o in simulate_profile(MULTI_MODEL)[size].outcomes)


def test_nodes_advertise_their_group_and_accelerator():
    ray_cluster, _ = render_profile(MULTI_MODEL)
    shapes = {shape.name: shape for shape in placement.group_shapes(ray_cluster)}
    four = shapes["l40s-4x"].node_resources()
    assert four["GPU"] == 4 and four["CPU"] == 40
    assert four["accelerator_type:L40S"] == 1 and four["llm-serving-group:l40s-4x"] == 1
    assert "llm-serving-group:l40s-1x" not in four
    assert (shapes["l40s-1x"].min_nodes, shapes["l40s-1x"].max_nodes) == (2, 4)


def test_placement_groups_are_finished_as_ray_serve_llm_does():
    args = {
        "models": {"big": {"source": "org/big", "accelerator_type": "L40S", "tensor_parallel_size": 2, "worker_group": "g"}},
        "gateway": {"auth": {"mode": "none"}},
    }
    (request,) = placement.placement_requests(args, "min")
    assert request.strategy == "STRICT_PACK"
    group, hint = "llm-serving-group:g", "accelerator_type:L40S"
    assert request.bundle_dicts() == [
        {"CPU": 1.0, "GPU": 1.0, group: 0.001, hint: 0.001},  # the replica actor's CPU joins bundle 0
        {"GPU": 1.0, group: 0.001, hint: 0.001},
    ]
    # The app's own bundles, before Ray Serve LLM adds the accelerator hint and the replica actor.
    config = parse_app_config(args)
    assert to_llm_config("big", config.models["big"]).placement_group_config["bundles"] == [{"GPU": 1, group: 0.001}] * 2


def test_the_table_prints_model_group_and_node():
    out = io.StringIO()
    placement.print_placement_table([MULTI_MODEL], out=out)
    text = out.getvalue()
    assert "llama-3.3-70b-instruct" in text and "l40s-4x-0" in text
    assert "deadlocked" not in text
