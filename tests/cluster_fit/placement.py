"""Ray placement, simulated: does every model's placement group land on the worker nodes a profile gives it?

For a profile (values/*.yaml) rendered by the real chart, this module computes
- the Ray nodes of each worker group at minReplicas and at maxReplicas, with the Ray resources the
  autoscaler and the raylet give them (the group's `resources` field, rayStartParams, the Ray
  container's Kubernetes resources: ray/autoscaler/_private/kuberay/autoscaling_config.py,
  _get_ray_resources_from_group_spec);
- each model's placement groups (one per engine replica, min_replicas or max_replicas of them) from
  the app's own llm_serving.app.to_llm_config, finished the way Ray Serve LLM 2.60 finishes them:
  every bundle gets 0.001 of `accelerator_type:<type>` when the model has one
  (ray/llm/_internal/serve/engines/vllm/vllm_models.py, VLLMEngineConfig.placement_bundles), and the
  replica actor's own {"CPU": 1} is added to the first bundle
  (ray/llm/_internal/serve/core/server/llm_server.py, LLMServer.get_deployment_options and
  _merge_replica_actor_and_child_actor_bundles); the strategy defaults to PACK;
- then places them, adversarially: the groups' nodes join in every order, the pending placement
  groups are tried in every order, and a placement group may take any node that fits it (Ray's
  node scoring is not modelled, so every feasible choice is explored). STRICT_PACK puts all bundles
  on one node; PACK prefers one node and otherwise spreads bundle by bundle.

A scenario fails when a placement group is still pending after every node has joined; a GPU is
stranded when it is left free after every model's replicas are placed (a GPU node paid for and idle).

`python -m tests.cluster_fit.placement` prints, per profile: model -> group -> node.
"""

from __future__ import annotations

import decimal
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from llm_serving.app import to_llm_config
from llm_serving.config import parse_app_config
from tests.charts import render

PROFILES = render.profiles("llm-serving")
# Ray Serve LLM's hint per bundle for the accelerator-type resource (VLLMEngineConfig.placement_bundles).
ACCELERATOR_HINT = 0.001
STANDARD_KEYS = {"CPU", "GPU", "TPU", "memory"}
EPSILON = 1e-9

Resources = Dict[str, float]


@dataclass(frozen=True)
class GroupShape:
    """A worker group: how many nodes it has at min and max, and the Ray resources of one node."""

    name: str
    min_nodes: int
    max_nodes: int
    resources: Tuple[Tuple[str, float], ...]

    def node_resources(self) -> Resources:
        return dict(self.resources)


@dataclass(frozen=True)
class PlacementGroupRequest:
    """One engine replica's placement group."""

    model: str
    bundles: Tuple[Tuple[Tuple[str, float], ...], ...]
    strategy: str

    def bundle_dicts(self) -> List[Resources]:
        return [dict(bundle) for bundle in self.bundles]

    @property
    def gpus(self) -> float:
        return sum(bundle.get("GPU", 0.0) for bundle in self.bundle_dicts())


@dataclass
class Outcome:
    """One scenario: join order, request order, and where every placement group went (or not)."""

    join_order: Tuple[str, ...]
    request_order: Tuple[str, ...]
    placed: List[Tuple[str, str, str]]  # (model, group, node)
    pending: List[str]  # models with a placement group left unplaced
    free_gpus: Dict[str, float]  # node -> GPUs left free

    @property
    def ok(self) -> bool:
        return not self.pending

    @property
    def stranded_gpus(self) -> float:
        return sum(self.free_gpus.values())


@dataclass
class Result:
    """Every scenario of one profile at one size (min or max)."""

    profile: str
    size: str
    groups: List[GroupShape]
    requests: List[PlacementGroupRequest]
    outcomes: List[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> List[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def stranding(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.ok and o.stranded_gpus > EPSILON]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stranding


# ---- what the chart renders -> nodes ----


def k8s_quantity(value: Any) -> float:
    """A Kubernetes quantity as a number, rounded up as the autoscaler does (_round_up_k8s_quantity)."""
    text = str(value)
    suffixes = {"m": decimal.Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            number = decimal.Decimal(text[: -len(suffix)]) * decimal.Decimal(suffixes[suffix])
            break
    else:
        number = decimal.Decimal(text)
    return float(number.to_integral_value(rounding=decimal.ROUND_UP))


def node_resources(group: Dict[str, Any]) -> Resources:
    """The Ray resources of one node of a rendered worker group (autoscaling_config.py's precedence)."""
    group_resources = group.get("resources") or {}
    params = group.get("rayStartParams") or {}
    k8s = group["template"]["spec"]["containers"][0].get("resources", {})
    limits, requests = k8s.get("limits", {}), k8s.get("requests", {})
    resources: Resources = {}
    if "CPU" in group_resources:
        resources["CPU"] = k8s_quantity(group_resources["CPU"])
    elif "num-cpus" in params:
        resources["CPU"] = float(params["num-cpus"])
    elif "cpu" in limits or "cpu" in requests:
        resources["CPU"] = k8s_quantity(limits.get("cpu", requests.get("cpu")))
    if "GPU" in group_resources:
        resources["GPU"] = k8s_quantity(group_resources["GPU"])
    elif "num-gpus" in params:
        resources["GPU"] = float(params["num-gpus"])
    else:
        for key, quantity in itertools.chain(limits.items(), requests.items()):
            if key.endswith("gpu") and k8s_quantity(quantity) > 0:
                resources["GPU"] = k8s_quantity(quantity)
                break
    if group_resources:
        custom = {k: k8s_quantity(v) for k, v in group_resources.items() if k not in STANDARD_KEYS}
    elif "resources" in params:
        custom = {k: float(v) for k, v in json.loads(params["resources"].strip("'\"").replace("\\", "")).items()}
    else:
        custom = {}
    resources.update(custom)
    return resources


def group_shapes(ray_cluster: Dict[str, Any]) -> List[GroupShape]:
    return [
        GroupShape(
            name=group["groupName"],
            min_nodes=int(group["minReplicas"]),
            max_nodes=int(group["maxReplicas"]),
            resources=tuple(sorted(node_resources(group).items())),
        )
        for group in ray_cluster.get("workerGroupSpecs", [])
    ]


# ---- the app's args -> placement groups ----


def placement_requests(args: Dict[str, Any], size: str) -> List[PlacementGroupRequest]:
    """One placement group per engine replica: min_replicas (size "min") or max_replicas ("max")."""
    config = parse_app_config(args)
    requests = []
    for name, model in config.models.items():
        llm_config = to_llm_config(name, model)
        pg_config = llm_config.placement_group_config or {}
        bundles = [dict(bundle) for bundle in pg_config.get("bundles") or []]
        if llm_config.accelerator_type:
            for bundle in bundles:
                bundle.setdefault(f"accelerator_type:{llm_config.accelerator_type}", ACCELERATOR_HINT)
        actor_options = llm_config.deployment_config.get("ray_actor_options", {})
        replica_actor = {"CPU": actor_options.get("num_cpus", 1), "GPU": actor_options.get("num_gpus", 0)}
        replica_actor.update(actor_options.get("resources", {}))
        first = bundles[0] if bundles else {}
        merged = {key: first.get(key, 0) + replica_actor.get(key, 0) for key in set(first) | set(replica_actor)}
        bundles = [merged] + bundles[1:]
        bundles = [{k: float(v) for k, v in bundle.items() if v} for bundle in bundles]
        count = model.autoscaling.min_replicas if size == "min" else model.autoscaling.max_replicas
        request = PlacementGroupRequest(
            model=name,
            bundles=tuple(tuple(sorted(bundle.items())) for bundle in bundles),
            strategy=pg_config.get("strategy", "PACK"),
        )
        requests.extend([request] * count)
    return requests


# ---- the search ----


@dataclass
class _Node:
    name: str
    group: str
    free: Resources


def _fits(free: Resources, demand: Resources) -> bool:
    return all(free.get(key, 0.0) + EPSILON >= amount for key, amount in demand.items())


def _take(free: Resources, demand: Resources) -> Resources:
    result = dict(free)
    for key, amount in demand.items():
        result[key] = result.get(key, 0.0) - amount
    return result


def _sum(bundles: Sequence[Resources]) -> Resources:
    total: Resources = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def _signature(node: _Node) -> Tuple[Any, ...]:
    """Nodes with the same group and free resources are interchangeable: explore one of them."""
    return (node.group, tuple(sorted((k, round(v, 6)) for k, v in node.free.items())))


def _choices(nodes: List[_Node], request: PlacementGroupRequest) -> List[List[Tuple[int, Resources]]]:
    """Every distinct way Ray could place the request now: [(node index, bundle)], or [] if none."""
    bundles = request.bundle_dicts()
    total = _sum(bundles)
    single = []
    seen = set()
    for index, node in enumerate(nodes):
        if _fits(node.free, total) and _signature(node) not in seen:
            seen.add(_signature(node))
            single.append([(index, total)])
    if request.strategy == "STRICT_PACK" or single:
        return single
    if request.strategy != "PACK":
        raise NotImplementedError(f"strategy {request.strategy} is not simulated")
    # PACK across nodes: bundle by bundle, first fit.
    free = [dict(node.free) for node in nodes]
    plan = []
    for bundle in bundles:
        for index, node_free in enumerate(free):
            if _fits(node_free, bundle):
                free[index] = _take(node_free, bundle)
                plan.append((index, bundle))
                break
        else:
            return []
    return [plan]


def _place_pending(
    nodes: List[_Node], pending: List[PlacementGroupRequest], placed: List[Tuple[str, str, str]]
) -> Iterator[Tuple[List[_Node], List[PlacementGroupRequest], List[Tuple[str, str, str]]]]:
    """Place pending requests in order, each wherever it fits (every choice); yield the end states."""
    for position, request in enumerate(pending):
        options = _choices(nodes, request)
        if not options:
            continue
        rest = pending[:position] + pending[position + 1 :]
        for plan in options:
            new_nodes = [_Node(n.name, n.group, dict(n.free)) for n in nodes]
            for index, demand in plan:
                new_nodes[index].free = _take(new_nodes[index].free, demand)
            where = new_nodes[plan[0][0]]
            yield from _place_pending(new_nodes, rest, placed + [(request.model, where.group, where.name)])
        return
    yield nodes, pending, placed


def _run(
    joins: List[Tuple[str, str, Resources]], requests: List[PlacementGroupRequest]
) -> Iterator[Tuple[List[_Node], List[PlacementGroupRequest], List[Tuple[str, str, str]]]]:
    states: List[Tuple[List[_Node], List[PlacementGroupRequest], List[Tuple[str, str, str]]]] = [([], list(requests), [])]
    for node_name, group, resources in joins:
        next_states = []
        seen = set()
        for nodes, pending, placed in states:
            grown = nodes + [_Node(node_name, group, dict(resources))]
            for state in _place_pending(grown, pending, placed):
                key = (tuple(_signature(n) + (n.name,) for n in state[0]), tuple(r.model for r in state[1]))
                if key not in seen:
                    seen.add(key)
                    next_states.append(state)
        states = next_states
    yield from states


def simulate(profile: str, groups: List[GroupShape], requests: List[PlacementGroupRequest], size: str) -> Result:
    result = Result(profile=profile, size=size, groups=groups, requests=requests)
    models_in_order = sorted({tuple(r.model for r in order) for order in itertools.permutations(requests)})
    by_model = {r.model: r for r in requests}
    for group_order in itertools.permutations(groups):
        joins = []
        for group in group_order:
            count = group.min_nodes if size == "min" else group.max_nodes
            for i in range(count):
                joins.append((f"{group.name}-{i}", group.name, group.node_resources()))
        for model_order in models_in_order:
            ordered = [by_model[m] for m in model_order]
            for nodes, pending, placed in _run(joins, ordered):
                result.outcomes.append(
                    Outcome(
                        join_order=tuple(g.name for g in group_order),
                        request_order=model_order,
                        placed=sorted(placed),
                        pending=sorted(r.model for r in pending),
                        free_gpus={n.name: n.free.get("GPU", 0.0) for n in nodes if n.free.get("GPU", 0.0) > EPSILON},
                    )
                )
    return result


# ---- profiles ----


def render_profile(profile: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The rendered RayService's rayClusterConfig and the app's args, for a values profile."""
    objects = render.render_chart("llm-serving", values_files=[profile])
    rayservice = render.one(objects, "RayService")
    (application,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    return rayservice["spec"]["rayClusterConfig"], application["args"]


def simulate_profile(profile: Path, args_override: Optional[Dict[str, Any]] = None) -> Dict[str, Result]:
    ray_cluster, args = render_profile(profile)
    if args_override is not None:
        args = args_override
    groups = group_shapes(ray_cluster)
    return {size: simulate(profile.stem, groups, placement_requests(args, size), size) for size in ("min", "max")}


def placement_table(profiles: Sequence[Path] = PROFILES) -> List[Dict[str, Any]]:
    """One row per profile, size and model replica: where it lands, and whether every scenario placed it."""
    rows = []
    for profile in profiles:
        for size, result in simulate_profile(profile).items():
            scenarios = len(result.outcomes)
            example = next((o for o in result.outcomes if o.ok), result.outcomes[0] if result.outcomes else None)
            status = "ok" if result.ok else f"{len(result.failures)} deadlocked, {len(result.stranding)} stranding"
            if example is None or not example.placed:
                rows.append({"profile": profile.stem, "size": size, "model": "-", "group": "-", "node": "-",
                             "scenarios": scenarios, "status": status})
            for model, group, node in (example.placed if example else []):
                rows.append({"profile": profile.stem, "size": size, "model": model, "group": group, "node": node,
                             "scenarios": scenarios, "status": status})
    return rows


def print_placement_table(profiles: Sequence[Path] = PROFILES, out: Any = None) -> None:
    out = out or sys.stdout
    rows = placement_table(profiles)
    header = ("profile", "size", "model", "group", "node", "scenarios", "status")
    widths = [max(len(str(r[h])) for r in rows + [dict(zip(header, header))]) for h in header]
    for row in [dict(zip(header, header))] + rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(header, widths)).rstrip(), file=out)


if __name__ == "__main__":
    print_placement_table()
