"""Karpenter fit: every profile's Ray pods, on the karpenter-nodepools pools, get the nodes values/README.md names.

The simulation is tests/cluster_fit/karpenter.py (`python -m tests.cluster_fit.karpenter` prints it).
One test per kind of defect of issue 13: GPU packing, image architecture, root volume under RAID0,
the cpu pool's missing taint, the DaemonSet budget (keepOnUninstall is in test_karpenter_nodepools).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.charts import render
from tests.cluster_fit import karpenter as k

PROFILES = k.PROFILES
SCENARIOS = k.scenario_names()
HEAD_TAINT = {"key": "llm-serving.io/ray-head", "value": "true", "effect": "NoSchedule"}
HEAD_TOLERATION = {"key": "llm-serving.io/ray-head", "operator": "Equal", "value": "true", "effect": "NoSchedule"}

# Profiles whose 4-GPU group still selects `gpu-l40s` (now one GPU per node): the profile must say
# `nodePool: gpu-l40s-4x` (values/ is not this change's to edit). Strict: remove the entry when it does.
AWAITING_PROFILE_CHANGE: dict = {}  # profile stem -> what it must change (its tests xfail meanwhile)


def profile_params(awaiting: bool = False) -> List:
    params = []
    for profile in PROFILES:
        marks = []
        if awaiting and profile.stem in AWAITING_PROFILE_CHANGE:
            marks = [pytest.mark.xfail(strict=True, reason=AWAITING_PROFILE_CHANGE[profile.stem])]
        params.append(pytest.param(profile, marks=marks, id=profile.stem))
    return params


def rows_of(profile: Path, scenario: str = k.DEFAULTS) -> List[k.FitRow]:
    return k.fit_table(scenario, [profile])


def describe(row: k.FitRow) -> str:
    return f"{row.profile}/{row.group} on {row.pool or '(any pool)'} [{row.scenario}]"


class TestFacts:
    def test_the_table_says_where_each_field_comes_from(self):
        source = k.provenance()
        assert "aws/karpenter-provider-aws" in source["source"] and "v1.14.1" in source["source"]
        for key in ("instanceTypes", "onDemandUSDPerHourUsEast1", "selection", "allocatableFormulas"):
            assert source.get(key), f"_provenance lacks {key}"
        table = k.load_table()
        families = {it.family for it in table.values()}
        assert {"g5", "g6", "g6e", "p4d", "p5", "m6a", "m6i", "m7i", "m7g"} <= families

    def test_karpenters_formulas_reproduce_its_published_allocatable(self):
        """The kubelet reserve computed here equals what Karpenter publishes for every vendored type."""
        wrong = []
        for it in k.load_table().values():
            computed = it.allocatable()
            published = dict(it.published_allocatable)
            if (f"{computed['cpu']}m", f"{computed['memory']}Mi", computed["nvidia.com/gpu"]) != (published["cpu"], published["memory"], published["nvidia.com/gpu"]):
                wrong.append((it.name, computed, published))
        assert not wrong, wrong[:5]

    def test_the_chart_states_the_image_architectures_the_simulation_uses(self):
        values = yaml.safe_load((k.KARPENTER_CHART_DIR / "values.yaml").read_text())
        assert set(values["rayImageArchitectures"]) == k.IMAGE_ARCHITECTURES


class TestProfilesOnTheDefaultPools:
    """values/*.yaml with the karpenter-nodepools defaults."""

    @pytest.mark.parametrize("profile", profile_params(awaiting=True))
    def test_every_pod_gets_a_node(self, profile):
        empty = [describe(r) for r in rows_of(profile) if not r.candidates]
        assert not empty, f"no instance type Karpenter may launch for: {empty}"

    @pytest.mark.parametrize("profile", profile_params())
    def test_one_pod_per_gpu_node(self, profile):
        """Defect 1 (GPU packing): every candidate has exactly the pod's GPUs, so pods pending together
        cannot be packed onto one larger node (aws/karpenter-provider-aws#5379)."""
        for row in rows_of(profile):
            wrong = sorted({f"{c.pool}:{c.instance.name} ({c.gpus} GPUs)" for c in row.candidates if c.gpus != row.gpus_per_pod})
            assert not wrong, f"{describe(row)} needs {row.gpus_per_pod} GPU(s) per node; Karpenter may launch {wrong}"

    @pytest.mark.parametrize("profile", profile_params())
    def test_pods_land_on_the_image_architecture(self, profile):
        """Defect 7: the image is amd64 only, so no Ray pod may get another architecture."""
        for row in rows_of(profile):
            wrong = sorted({f"{c.pool}:{c.instance.name} ({c.instance.architecture})" for c in row.candidates if c.instance.architecture not in k.IMAGE_ARCHITECTURES})
            assert not wrong, f"{describe(row)}: the image has {sorted(k.IMAGE_ARCHITECTURES)}, Karpenter may launch {wrong}"

    @pytest.mark.parametrize("profile", profile_params(awaiting=True))
    def test_cheapest_is_what_values_readme_names(self, profile):
        named = k.readme_nodes()[profile.stem]
        for row in rows_of(profile):
            if not row.pool:  # no pool selected (dev-cpu): any cluster, kind included
                continue
            assert row.pool in named, f"values/README.md names no `{row.pool}` nodes for {profile.name}"
            expected = k.readme_instance(row.profile, row.pool)
            assert expected, f"values/README.md should name exactly one instance type for `{row.pool}` of {profile.name}, names {named[row.pool]}"
            assert row.cheapest is not None, f"{describe(row)}: no candidate"
            assert row.cheapest.instance.name == expected, (
                f"{describe(row)}: Karpenter launches {row.cheapest.instance.name} "
                f"(cheapest of {[c.instance.name for c in row.chosen[:5]]}), values/README.md says {expected}"
            )

    @pytest.mark.parametrize("profile", profile_params())
    def test_pool_limits_hold_the_profile_at_its_most(self, profile):
        """maxReplicas x GPUs of every group on a pool, twice (upgradeStrategy NewCluster runs a second
        cluster), within the pool's nvidia.com/gpu limit."""
        scenario = k.render_scenario(k.DEFAULTS)
        limits = {p.name: dict(p.limits).get("nvidia.com/gpu") for p in scenario.pools}
        demand: Dict[str, int] = {}
        for pod in k.profile_pods(profile):
            if pod.gpus and pod.pool in limits:
                demand[pod.pool] = demand.get(pod.pool, 0) + 2 * pod.max_replicas * pod.gpus
        for pool, gpus in demand.items():
            assert limits[pool] is not None and gpus <= int(limits[pool]), f"{profile.name} may need {gpus} GPUs on {pool}; its limit is {limits[pool]}"

    @pytest.mark.parametrize("profile", profile_params())
    def test_model_cache_fits_the_node_disk(self, profile):
        """The model cache (disk emptyDirs) fits the ephemeral storage of the node it gets: the RAID0
        instance store on GPU nodes. (Candidates already exclude types it does not fit; this names the sizes.)"""
        scenario = k.render_scenario(k.DEFAULTS)
        for pod in k.profile_pods(profile):
            for candidate in k.candidates(pod, scenario):
                pool = next(p for p in scenario.pools if p.name == candidate.pool)
                storage = candidate.instance.allocatable(scenario.node_class(pool).ephemeral_bytes(candidate.instance))["ephemeral-storage"]
                assert pod.disk_empty_dirs <= storage, (pod.group, candidate.instance.name, pod.disk_empty_dirs, storage)


class TestCiScenarios:
    """The chart's ci/*-values.yaml: the pools they render obey the same rules (pods whose pool a
    scenario does not render are skipped)."""

    @pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != k.DEFAULTS])
    @pytest.mark.parametrize("profile", profile_params())
    def test_one_pod_per_gpu_node_on_the_image_architecture(self, scenario, profile):
        pools = {p.name for p in k.render_scenario(scenario).pools}
        for row in rows_of(profile, scenario):
            if row.pool and row.pool not in pools:
                continue
            wrong = sorted({
                f"{c.pool}:{c.instance.name} ({c.gpus} GPUs, {c.instance.architecture})"
                for c in row.candidates
                if c.gpus != row.gpus_per_pod or c.instance.architecture not in k.IMAGE_ARCHITECTURES
            })
            assert not wrong, f"{describe(row)} ({row.gpus_per_pod} GPUs, image {sorted(k.IMAGE_ARCHITECTURES)}): Karpenter may launch {wrong}"


class TestDefects:
    def test_the_detectors_catch_a_family_only_pool_and_graviton_heads(self):
        """The shapes of defects 1 and 7, built by hand: a g6e pool restricted by family only offers a
        1-GPU pod 4- and 8-GPU machines; an arm64 cpu pool offers the head Graviton."""
        family_only = k.NodePool("gpu-l40s", 10, (("llm-serving.io/node-pool", "gpu-l40s"),), (("nvidia.com/gpu", "true", "NoSchedule"),),
                                 (("karpenter.k8s.aws/instance-family", "In", ("g6e",)), ("kubernetes.io/arch", "In", ("amd64",))), (), "gpu")
        graviton = k.NodePool("cpu", 10, (("llm-serving.io/node-pool", "cpu"),), (),
                              (("karpenter.k8s.aws/instance-category", "In", ("m",)), ("kubernetes.io/arch", "In", ("arm64",))), (), "cpu")
        gpu_class = k.NodeClass("gpu", "RAID0", 50 * k.GI, 3000, 125)
        cpu_class = k.NodeClass("cpu", "", 100 * k.GI, 3000, 125)
        scenario = k.Scenario("by-hand", (family_only, graviton), (("gpu", gpu_class), ("cpu", cpu_class)))
        head, worker = k.profile_pods(render.VALUES / "canary-rollout.yaml")[:2]
        assert {c.gpus for c in k.candidates(worker, scenario)} == {1, 4, 8}
        assert {c.instance.architecture for c in k.candidates(head, scenario)} == {"arm64"}

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_root_volume_holds_only_the_os_under_raid0(self, scenario):
        """Defect 8: with instanceStorePolicy RAID0 the kubelet, containerd and the model caches live on
        the NVMe, so a class whose pools only launch types with instance store keeps a small EBS volume
        at the gp3 baseline (<= 64 GiB, 3000 IOPS, 125 MiB/s) instead of an unused 300 GiB/6000 IOPS one."""
        rendered = k.render_scenario(scenario)
        table = k.load_table()
        for name, node_class in rendered.classes:
            if node_class.instance_store_policy != "RAID0":
                continue
            pools = [p for p in rendered.pools if p.node_class == name]
            launchable = [it for it in table.values() for p in pools if all(k.requirement_met(k.node_labels(p, it), *r) for r in p.requirements)]
            if not launchable or not all(it.local_nvme_gb for it in launchable):
                continue
            assert node_class.root_volume_bytes <= 64 * k.GI, f"{scenario}: nodeClasses.{name} has RAID0 and a {node_class.root_volume_bytes // k.GI} GiB volume"
            assert (node_class.root_volume_iops or 3000) <= 3000 and (node_class.root_volume_throughput or 125) <= 125, (
                f"{scenario}: nodeClasses.{name} pays for {node_class.root_volume_iops} IOPS / {node_class.root_volume_throughput} MiB/s the OS does not use"
            )

    def test_the_daemonset_budget_is_stated_where_sizing_is_read(self):
        """Defect 8: the budget the sizing assumes is written down, and it is the simulation's."""
        budget = f"{k.DAEMONSET_BUDGET['cpu']}m CPU and {k.DAEMONSET_BUDGET['memory'] // 1024} GiB memory per node"
        chart_readme = (k.KARPENTER_CHART_DIR / "README.md").read_text()
        assert f"DaemonSet budget of {budget}" in chart_readme
        assert f"DaemonSet budget of {budget}" in " ".join(k.VALUES_README.read_text().split())

    def test_the_cpu_pool_taint_recipe_keeps_other_pods_off_and_heads_on(self):
        """Defect 8: the cpu pool stays untainted (the llm-serving head has no toleration by default);
        the chart README says why and gives the taint + toleration pair, which this checks works."""
        readme = (k.KARPENTER_CHART_DIR / "README.md").read_text()
        section = readme.split("## Why the cpu pool has no taint", 1)
        assert len(section) == 2, "charts/karpenter-nodepools/README.md lacks 'Why the cpu pool has no taint'"
        assert "llm-serving.io/ray-head" in section[1].split("\n## ", 1)[0]
        unrelated = k.RayPod("other", "unrelated", 0, 100, 128, 0, 0, (), (), (), 1, 1)
        assert {c.pool for c in k.candidates(unrelated, k.render_scenario(k.DEFAULTS))} == {"cpu"}  # why it matters
        tainted = k.render_scenario(k.DEFAULTS, json.dumps({"nodePools": {"cpu": {"taints": [HEAD_TAINT]}}}))
        assert not k.candidates(unrelated, tainted)
        profile = render.VALUES / "single-gpu-8b.yaml"
        head = k.profile_pods(profile, json.dumps({"head": {"tolerations": [HEAD_TOLERATION]}}))[0]
        assert head.group == "head"
        assert [c.instance.name for c in k.candidates(head, tainted)][:1] == ["m6a.xlarge"]
        untolerated = k.profile_pods(profile)[0]
        assert not k.candidates(untolerated, tainted)


def test_module_prints_every_profile():
    out = io.StringIO()
    k.print_fit_table(SCENARIOS, out=out)
    for profile in PROFILES:
        assert re.search(rf"^{re.escape(profile.stem)}\s", out.getvalue(), re.M), profile.stem
