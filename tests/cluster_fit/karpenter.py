"""Karpenter fit, simulated: which EC2 instance types would Karpenter launch for each Ray pod of a profile?

For every profile (values/*.yaml, rendered by the real llm-serving chart) and every scenario of the
karpenter-nodepools chart (its defaults, and each ci/*-values.yaml), this module takes the head and
every worker group's pod template, and the rendered NodePools and EC2NodeClasses, and computes the
instance types Karpenter may launch for one pending pod, the way Karpenter v1 filters them:

- a pool is compatible when its taints are tolerated (NoSchedule/NoExecute) and the pod's
  nodeSelector / required node affinity can be met by the pool's labels and requirements
  (a custom label the pool does not define cannot be met: Karpenter cannot invent it);
- an instance type is a candidate of the pool when it meets the pool's requirements and the pod's
  selectors on instance labels, when its capacity stays within the pool's `limits`, and when the
  pod fits its allocatable resources after the stated DaemonSet budget (DAEMONSET_BUDGET);
- allocatable is computed with Karpenter's own formulas (pkg/providers/instancetype/types.go at
  v1.14.1: memory minus 7.5% VM overhead (and 64 MiB on Graviton), kube-reserved CPU 6% of the
  first core, 1% of the second, 0.5% of cores 3-4, 0.25% of the rest, kube-reserved memory
  11 MiB x max pods + 255 MiB, eviction threshold 100 MiB; ephemeral-storage the RAID0 instance
  store or the root volume, minus 1 GiB kube-reserved and a 10% eviction threshold). A test checks
  that these formulas reproduce the allocatable Karpenter publishes for every vendored type;
- the pod's disk-backed emptyDirs (the model cache) must fit the node's ephemeral storage: not a
  scheduling input (a sizeLimit is no request), but a cache that outgrows the disk evicts the pod.

Karpenter prefers the highest-weight pool that can take the pod and there launches the cheapest
candidate (on-demand price, us-east-1, from Karpenter's own static price table). Candidates of lower
weight pools are kept as fallbacks (a pool at its limit): they must obey the same rules.

Facts: aws_instance_types.json (its `_provenance` says where every field comes from). The image's
architectures: IMAGE_ARCHITECTURES. Rendering is not validated here (tests/charts validates both
charts); the Ray autoscaler sidecar KubeRay adds to the head pod is counted from autoscalerOptions.

`python -m tests.cluster_fit.karpenter` prints the table: profile -> group -> instance types -> GPUs/node.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

from tests.charts import render

TABLE_PATH = Path(__file__).with_name("aws_instance_types.json")
KARPENTER_CHART = "karpenter-nodepools"
KARPENTER_CHART_DIR = render.CHARTS / KARPENTER_CHART
SERVING_CHART = "llm-serving"
PROFILES = render.profiles("llm-serving")
VALUES_README = render.VALUES / "README.md"
PLACEMENT_LABEL = "llm-serving.io/node-pool"
KARPENTER_APIS = ["karpenter.sh/v1", "karpenter.k8s.aws/v1"]
DEFAULTS = "defaults"
DEFAULT_VALUES: Dict[str, Any] = {"clusterName": "llm-prod", "assumeApiVersions": KARPENTER_APIS}

# The architectures the llm-serving image exists for. image/Dockerfile builds on
# rayproject/ray-llm:2.60.0-py311-cu128 (published for linux/amd64 only) and image/Dockerfile.cpu
# installs wheels resolved for manylinux x86_64 only (ci/build-image.sh): a single-arch amd64 image.
# The karpenter-nodepools chart states the same in `rayImageArchitectures` (a test compares them).
IMAGE_ARCHITECTURES: FrozenSet[str] = frozenset({"amd64"})

# What every node keeps for DaemonSets besides the Ray pod: the sizing assumes 500m CPU and 1 GiB.
# Typical EKS requests: aws-node 25m, kube-proxy 100m, ebs-csi-node 30m/120Mi, eks-pod-identity-agent
# 25m, NVIDIA device plugin and DCGM exporter ~100m/~400Mi, node-exporter and a log shipper ~200m/~400Mi.
# Stated in charts/karpenter-nodepools/README.md ("DaemonSet budget"); a test keeps them equal.
DAEMONSET_BUDGET = {"cpu": 500, "memory": 1024}  # millicores, MiB

# Karpenter v1.14.1 defaults (pkg/providers/instancetype/types.go, pkg/operator/options/options.go).
VM_MEMORY_OVERHEAD_PERCENT = 0.075
EVICTION_HARD_MEMORY_MIB = 100
KUBE_RESERVED_EPHEMERAL_GIB = 1
EVICTION_NODEFS_PERCENT = 10
KUBE_RESERVED_CPU_RANGES = ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, 1 << 31, 0.0025))
GRAVITON_CMA_MIB = 64

GI = 1024**3
MI = 1024**2


# ---------------------------------------------------------------- quantities

_SUFFIX = {"Ki": 1024, "Mi": MI, "Gi": GI, "Ti": 1024**4, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def parse_bytes(quantity: Any) -> int:
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(quantity))
    if not match:
        raise ValueError(f"not a byte quantity: {quantity!r}")
    return int(float(match.group(1)) * _SUFFIX[match.group(2)])


def parse_millicores(quantity: Any) -> int:
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1])
    return int(round(float(text) * 1000))


# ---------------------------------------------------------------- instance types


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    category: str
    generation: int
    size: str
    architecture: str
    vcpu: int
    memory_mib: int
    gpu_count: int
    gpu_name: Optional[str]
    gpu_memory_mib: Optional[int]
    gpu_manufacturer: Optional[str]
    local_nvme_gb: int
    max_pods: int
    price: Optional[float]
    published_allocatable: Tuple[Tuple[str, Any], ...]

    def labels(self) -> Dict[str, str]:
        """The well-known labels Karpenter puts on a node of this type (only those it has)."""
        labels = {
            "node.kubernetes.io/instance-type": self.name,
            "kubernetes.io/arch": self.architecture,
            "kubernetes.io/os": "linux",
            "karpenter.k8s.aws/instance-family": self.family,
            "karpenter.k8s.aws/instance-category": self.category,
            "karpenter.k8s.aws/instance-generation": str(self.generation),
            "karpenter.k8s.aws/instance-size": self.size,
            "karpenter.k8s.aws/instance-cpu": str(self.vcpu),
            "karpenter.k8s.aws/instance-memory": str(self.memory_mib),
        }
        if self.gpu_count:
            labels.update({
                "karpenter.k8s.aws/instance-gpu-count": str(self.gpu_count),
                "karpenter.k8s.aws/instance-gpu-name": str(self.gpu_name),
                "karpenter.k8s.aws/instance-gpu-manufacturer": str(self.gpu_manufacturer),
                "karpenter.k8s.aws/instance-gpu-memory": str(self.gpu_memory_mib),
            })
        if self.local_nvme_gb:
            labels["karpenter.k8s.aws/instance-local-nvme"] = str(self.local_nvme_gb)
        return labels

    def capacity_memory_mib(self) -> int:
        """Karpenter's memory capacity: the type's memory less Graviton CMA and the VM overhead."""
        mib = self.memory_mib - (GRAVITON_CMA_MIB if self.architecture == "arm64" else 0)
        return mib - math.ceil(mib * VM_MEMORY_OVERHEAD_PERCENT)

    def kube_reserved_cpu(self) -> int:
        cpu = self.vcpu * 1000
        reserved = 0
        for start, end, percentage in KUBE_RESERVED_CPU_RANGES:
            if cpu >= start:
                reserved += int((min(cpu, end) - start) * percentage)
        return reserved

    def allocatable(self, ephemeral_bytes: int = 0) -> Dict[str, int]:
        """cpu (millicores), memory (MiB), nvidia.com/gpu, pods, ephemeral-storage (bytes)."""
        memory = self.capacity_memory_mib() - (11 * self.max_pods + 255) - EVICTION_HARD_MEMORY_MIB
        ephemeral = ephemeral_bytes - KUBE_RESERVED_EPHEMERAL_GIB * GI - math.ceil(ephemeral_bytes * EVICTION_NODEFS_PERCENT / 100)
        return {
            "cpu": self.vcpu * 1000 - self.kube_reserved_cpu(),
            "memory": memory,
            "nvidia.com/gpu": self.gpu_count,
            "pods": self.max_pods,
            "ephemeral-storage": max(ephemeral, 0),
        }


@functools.lru_cache(maxsize=None)
def load_table(path: Path = TABLE_PATH) -> Dict[str, InstanceType]:
    document = json.loads(path.read_text())
    types = {}
    for name, entry in document["instanceTypes"].items():
        types[name] = InstanceType(
            name=name,
            family=entry["family"],
            category=entry["category"],
            generation=entry["generation"],
            size=entry["size"],
            architecture=entry["architecture"],
            vcpu=entry["vcpu"],
            memory_mib=entry["memoryMiB"],
            gpu_count=entry["gpuCount"],
            gpu_name=entry["gpuName"],
            gpu_memory_mib=entry["gpuMemoryMiB"],
            gpu_manufacturer=entry["gpuManufacturer"],
            local_nvme_gb=entry["localNvmeGB"],
            max_pods=entry["maxPods"],
            price=entry["onDemandUSDPerHourUsEast1"],
            published_allocatable=tuple(sorted(entry["karpenterAllocatable"].items())),
        )
    return types


def provenance(path: Path = TABLE_PATH) -> Dict[str, str]:
    return json.loads(path.read_text())["_provenance"]


# ---------------------------------------------------------------- pools and node classes


@dataclass(frozen=True)
class NodeClass:
    name: str
    instance_store_policy: str
    root_volume_bytes: int
    root_volume_iops: Optional[int]
    root_volume_throughput: Optional[int]

    def ephemeral_bytes(self, instance: InstanceType) -> int:
        """Karpenter's ephemeral-storage capacity (types.go ephemeralStorage)."""
        if self.instance_store_policy == "RAID0" and instance.local_nvme_gb:
            return instance.local_nvme_gb * 10**9
        return self.root_volume_bytes


@dataclass(frozen=True)
class NodePool:
    name: str
    weight: int
    labels: Tuple[Tuple[str, str], ...]
    taints: Tuple[Tuple[str, str, str], ...]  # key, value, effect
    requirements: Tuple[Tuple[str, str, Tuple[str, ...]], ...]  # key, operator, values
    limits: Tuple[Tuple[str, str], ...]
    node_class: str


def parse_nodepool(obj: Dict[str, Any]) -> NodePool:
    spec = obj["spec"]
    template = spec["template"]
    return NodePool(
        name=obj["metadata"]["name"],
        weight=int(spec.get("weight", 0)),
        labels=tuple(sorted(template.get("metadata", {}).get("labels", {}).items())),
        taints=tuple((t["key"], str(t.get("value", "")), t["effect"]) for t in template["spec"].get("taints", [])),
        requirements=tuple((r["key"], r["operator"], tuple(str(v) for v in r.get("values", []))) for r in template["spec"]["requirements"]),
        limits=tuple(sorted((k, str(v)) for k, v in spec.get("limits", {}).items())),
        node_class=template["spec"]["nodeClassRef"]["name"],
    )


def parse_nodeclass(obj: Dict[str, Any]) -> NodeClass:
    spec = obj["spec"]
    root = next(d for d in spec["blockDeviceMappings"] if d.get("rootVolume"))
    return NodeClass(
        name=obj["metadata"]["name"],
        instance_store_policy=spec.get("instanceStorePolicy", ""),
        root_volume_bytes=parse_bytes(root["ebs"]["volumeSize"]),
        root_volume_iops=root["ebs"].get("iops"),
        root_volume_throughput=root["ebs"].get("throughput"),
    )


@dataclass(frozen=True)
class Scenario:
    """One rendering of the karpenter-nodepools chart."""

    name: str
    pools: Tuple[NodePool, ...]
    classes: Tuple[Tuple[str, NodeClass], ...]

    def node_class(self, pool: NodePool) -> NodeClass:
        return dict(self.classes)[pool.node_class]


def scenario_names() -> List[str]:
    return [DEFAULTS] + [p.name for p in sorted((KARPENTER_CHART_DIR / "ci").glob("*-values.yaml"))]


@functools.lru_cache(maxsize=None)
def render_scenario(name: str = DEFAULTS, extra_values_json: str = "{}") -> Scenario:
    """The karpenter-nodepools chart with its defaults (DEFAULTS) or one ci/*-values.yaml, plus extra values."""
    extra = json.loads(extra_values_json)
    if name == DEFAULTS:
        values, files = {**DEFAULT_VALUES, **extra}, []
    else:
        values, files = extra, [KARPENTER_CHART_DIR / "ci" / name]
    objects = render.render_chart(KARPENTER_CHART, values_files=files, values=values or None, validate=False)
    pools = tuple(parse_nodepool(o) for o in render.by_kind(objects, "NodePool"))
    classes = tuple((o["metadata"]["name"], parse_nodeclass(o)) for o in render.by_kind(objects, "EC2NodeClass"))
    return Scenario(name=name, pools=pools, classes=classes)


# ---------------------------------------------------------------- Ray pods


@dataclass(frozen=True)
class RayPod:
    """One pod of a worker group (or the head), as the scheduler and Karpenter see it."""

    profile: str
    group: str  # "head" or the worker group name
    gpus: int
    cpu: int  # millicores requested (all containers, plus KubeRay's autoscaler sidecar on the head)
    memory: int  # MiB requested
    ephemeral_request: int  # bytes
    disk_empty_dirs: int  # bytes: sizeLimits of disk-backed emptyDirs (the model cache)
    node_selector: Tuple[Tuple[str, str], ...]
    tolerations: Tuple[Tuple[Tuple[str, str], ...], ...]
    affinity_terms: Tuple[Tuple[Tuple[str, str, Tuple[str, ...]], ...], ...]  # OR of ANDed expressions
    min_replicas: int
    max_replicas: int

    @property
    def pool(self) -> Optional[str]:
        return dict(self.node_selector).get(PLACEMENT_LABEL)


def _requests(containers: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    total = {"cpu": 0, "memory": 0, "nvidia.com/gpu": 0, "ephemeral-storage": 0}
    for container in containers:
        requests = dict(container.get("resources", {}).get("limits", {}))
        requests = {k: v for k, v in requests.items() if k in ("cpu", "memory", "nvidia.com/gpu", "ephemeral-storage")}
        requests.update(container.get("resources", {}).get("requests", {}))  # limits default the requests
        total["cpu"] += parse_millicores(requests.get("cpu", 0))
        total["memory"] += parse_bytes(requests.get("memory", 0)) // MI
        total["nvidia.com/gpu"] += int(requests.get("nvidia.com/gpu", 0))
        total["ephemeral-storage"] += parse_bytes(requests.get("ephemeral-storage", 0))
    return total


def ray_pod(profile: str, group: str, template: Dict[str, Any], replicas: Tuple[int, int], sidecars: Iterable[Dict[str, Any]] = ()) -> RayPod:
    spec = template["spec"]
    requests = _requests(list(spec["containers"]) + list(sidecars))
    disk = sum(
        parse_bytes(v["emptyDir"].get("sizeLimit", 0))
        for v in spec.get("volumes", [])
        if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
    )
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = tuple(
        tuple((e["key"], e["operator"], tuple(str(x) for x in e.get("values", []))) for e in term.get("matchExpressions", []))
        for term in required.get("nodeSelectorTerms", [])
    )
    return RayPod(
        profile=profile,
        group=group,
        gpus=requests["nvidia.com/gpu"],
        cpu=requests["cpu"],
        memory=requests["memory"],
        ephemeral_request=requests["ephemeral-storage"],
        disk_empty_dirs=disk,
        node_selector=tuple(sorted(spec.get("nodeSelector", {}).items())),
        tolerations=tuple(tuple(sorted((k, str(v)) for k, v in t.items())) for t in spec.get("tolerations", [])),
        affinity_terms=terms,
        min_replicas=replicas[0],
        max_replicas=replicas[1],
    )


@functools.lru_cache(maxsize=None)
def profile_pods(profile: Path, extra_values_json: str = "{}") -> Tuple[RayPod, ...]:
    """The head and one pod per worker group of a profile rendered by the llm-serving chart."""
    extra = json.loads(extra_values_json)
    objects = render.render_chart(SERVING_CHART, values_files=[profile], values=extra or None, namespace="llm", validate=False)
    (rayservice,) = render.by_kind(objects, "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    sidecars = []
    if cluster.get("enableInTreeAutoscaling"):
        sidecars.append({"resources": cluster.get("autoscalerOptions", {}).get("resources", {})})
    name = profile.stem
    pods = [ray_pod(name, "head", cluster["headGroupSpec"]["template"], (1, 1), sidecars)]
    for group in cluster.get("workerGroupSpecs", []):
        pods.append(ray_pod(name, group["groupName"], group["template"], (int(group.get("minReplicas", 0)), int(group["maxReplicas"]))))
    return tuple(pods)


# ---------------------------------------------------------------- matching


def requirement_met(labels: Dict[str, FrozenSet[str]], key: str, operator: str, values: Tuple[str, ...]) -> bool:
    """A node selector requirement against a node's possible label values (absent label: not In, not Exists)."""
    present = labels.get(key)
    if operator == "In":
        return bool(present and present & set(values))
    if operator == "NotIn":
        return not present or bool(present - set(values))
    if operator == "Exists":
        return bool(present)
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt", "Gte", "Lte"):
        if not present:
            return False
        bound = int(values[0])
        compare = {"Gt": lambda v: v > bound, "Lt": lambda v: v < bound, "Gte": lambda v: v >= bound, "Lte": lambda v: v <= bound}[operator]
        return any(compare(int(v)) for v in present if re.fullmatch(r"-?[0-9]+", v))
    raise ValueError(f"unknown operator {operator}")


def node_labels(pool: NodePool, instance: InstanceType) -> Dict[str, FrozenSet[str]]:
    """The labels a node of this pool and type may carry: the type's, the pool's template labels,
    the pool's name, and labels the pool's requirements define (capacity type, custom keys)."""
    labels = {k: frozenset({v}) for k, v in instance.labels().items()}
    labels["karpenter.sh/nodepool"] = frozenset({pool.name})
    for key, operator, values in pool.requirements:
        if key not in labels and operator == "In" and not requirement_is_instance_key(key):
            labels[key] = frozenset(values)
    for key, value in pool.labels:
        labels[key] = frozenset({value})
    return labels


def tolerates(pod: RayPod, pool: NodePool) -> bool:
    for key, value, effect in pool.taints:
        if effect not in ("NoSchedule", "NoExecute"):
            continue
        ok = False
        for toleration in map(dict, pod.tolerations):
            if toleration.get("effect") not in (None, "", effect):
                continue
            if toleration.get("operator", "Equal") == "Exists":
                ok = ok or toleration.get("key") in (None, "", key)
            else:
                ok = ok or (toleration.get("key") == key and toleration.get("value", "") == value)
        if not ok:
            return False
    return True


def within_limits(pool: NodePool, instance: InstanceType) -> bool:
    """Karpenter drops types whose capacity alone would exceed the pool's limits (an empty pool)."""
    capacity = {"cpu": instance.vcpu * 1000, "memory": instance.capacity_memory_mib() * MI, "nvidia.com/gpu": instance.gpu_count}
    for resource, limit in pool.limits:
        if resource == "cpu" and capacity["cpu"] > parse_millicores(limit):
            return False
        if resource == "memory" and capacity["memory"] > parse_bytes(limit):
            return False
        if resource == "nvidia.com/gpu" and capacity["nvidia.com/gpu"] > int(limit):
            return False
    return True


def fits(pod: RayPod, instance: InstanceType, node_class: NodeClass) -> bool:
    free = instance.allocatable(node_class.ephemeral_bytes(instance))
    return (
        pod.cpu + DAEMONSET_BUDGET["cpu"] <= free["cpu"]
        and pod.memory + DAEMONSET_BUDGET["memory"] <= free["memory"]
        and pod.gpus <= free["nvidia.com/gpu"]
        and pod.ephemeral_request + pod.disk_empty_dirs <= free["ephemeral-storage"]
    )


def selectable(pod: RayPod, pool: NodePool, labels: Dict[str, FrozenSet[str]]) -> bool:
    if not all(requirement_met(labels, k, "In", (v,)) for k, v in pod.node_selector):
        return False
    if pod.affinity_terms and not any(all(requirement_met(labels, *e) for e in term) for term in pod.affinity_terms):
        return False
    return True


@dataclass(frozen=True)
class Candidate:
    pool: str
    weight: int
    instance: InstanceType

    @property
    def gpus(self) -> int:
        return self.instance.gpu_count


def cost_key(candidate: Candidate) -> Tuple[Any, ...]:
    """Karpenter launches the cheapest type; without a price, fewest GPUs, vCPUs, memory."""
    it = candidate.instance
    price = it.price if it.price is not None else math.inf
    return (price, it.gpu_count, it.vcpu, it.memory_mib, it.name)


def candidates(pod: RayPod, scenario: Scenario, table: Optional[Dict[str, InstanceType]] = None) -> List[Candidate]:
    """Every (pool, instance type) Karpenter may launch for this pod, best pool first, cheapest first."""
    table = table if table is not None else load_table()
    found = []
    for pool in scenario.pools:
        if not tolerates(pod, pool):
            continue
        node_class = scenario.node_class(pool)
        for instance in table.values():
            labels = node_labels(pool, instance)
            if not all(requirement_met(labels, *r) for r in pool.requirements):
                continue
            if not selectable(pod, pool, labels):
                continue
            if not within_limits(pool, instance) or not fits(pod, instance, node_class):
                continue
            found.append(Candidate(pool.name, pool.weight, instance))
    return sorted(found, key=lambda c: (-c.weight, cost_key(c)))


def requirement_is_instance_key(key: str) -> bool:
    """Requirement keys that describe the instance type: a type without the label does not meet In."""
    return key.startswith("karpenter.k8s.aws/instance-") or key in ("node.kubernetes.io/instance-type", "kubernetes.io/arch")


def launched(found: List[Candidate]) -> List[Candidate]:
    """The candidates of the pool Karpenter picks: the highest weight with any candidate."""
    if not found:
        return []
    best = found[0].weight
    pools = [c.pool for c in found if c.weight == best]
    return [c for c in found if c.weight == best and c.pool in pools]


# ---------------------------------------------------------------- values/README.md

INSTANCE_NAME = re.compile(r"\b([a-z][a-z0-9-]*\.(?:[0-9]*x?large|metal[a-z0-9-]*|medium))\b")


@functools.lru_cache(maxsize=None)
def readme_nodes() -> Dict[str, Dict[str, List[str]]]:
    """values/README.md's Nodes column: profile -> pool -> instance types it names."""
    result: Dict[str, Dict[str, List[str]]] = {}
    for line in VALUES_README.read_text().splitlines():
        match = re.match(r"^\| \[`(?P<file>[^`]+)\.yaml`\]\([^)]*\) \|(?P<rest>.*)$", line)
        if not match:
            continue
        cells = [c.strip() for c in match.group("rest").split("|")]
        nodes = cells[1]
        pools: Dict[str, List[str]] = {}
        for segment in nodes.split(";"):
            named = re.match(r"\s*`(?P<pool>[a-z0-9-]+)`:(?P<text>.*)", segment)
            if named:
                pools[named.group("pool")] = INSTANCE_NAME.findall(named.group("text"))
        result[match.group("file")] = pools
    return result


def readme_instance(profile: str, pool: str) -> Optional[str]:
    """The one instance type values/README.md names for a profile's pool, if it names exactly one."""
    named = readme_nodes().get(profile, {}).get(pool, [])
    return named[0] if len(set(named)) == 1 else None


# ---------------------------------------------------------------- the table


@dataclass
class FitRow:
    scenario: str
    profile: str
    group: str
    pool: str  # the pool the pod selects ("" for none)
    gpus_per_pod: int
    candidates: List[Candidate] = field(default_factory=list)

    @property
    def chosen(self) -> List[Candidate]:
        return launched(self.candidates)

    @property
    def cheapest(self) -> Optional[Candidate]:
        return self.chosen[0] if self.chosen else None


def fit_table(scenario_name: str = DEFAULTS, profiles: Iterable[Path] = PROFILES) -> List[FitRow]:
    scenario = render_scenario(scenario_name)
    rows = []
    for profile in profiles:
        for pod in profile_pods(profile):
            rows.append(FitRow(scenario_name, profile.stem, pod.group, pod.pool or "", pod.gpus, candidates(pod, scenario)))
    return rows


def format_row(row: FitRow, limit: int = 4, rendered: Iterable[str] = ()) -> List[str]:
    chosen = row.chosen
    if not chosen:
        why = "pool not in this scenario" if row.pool and row.pool not in set(rendered) else "NONE: no instance type of the pool fits the pod"
        return [row.profile, row.group, row.pool or "(any)", str(row.gpus_per_pod), why, "-", "-"]
    names = [f"{c.instance.name}" for c in chosen[:limit]]
    more = f" +{len(chosen) - limit} more" if len(chosen) > limit else ""
    gpus = sorted({c.gpus for c in row.candidates})
    cheapest = chosen[0]
    price = f"${cheapest.instance.price:.3f}/h" if cheapest.instance.price is not None else "no price"
    fallbacks = sorted({c.pool for c in row.candidates} - {cheapest.pool})
    pool = cheapest.pool + (f" (fallback {', '.join(fallbacks)})" if fallbacks else "")
    return [row.profile, row.group, pool, str(row.gpus_per_pod), ", ".join(names) + more, ",".join(map(str, gpus)), f"{cheapest.instance.name} {price}"]


def print_fit_table(scenario_names_: Iterable[str] = (DEFAULTS,), out: Any = None) -> None:
    out = out or sys.stdout
    header = ["profile", "group", "pool", "GPUs/pod", "instance types Karpenter may launch (cheapest first)", "GPUs/node", "launched (us-east-1 on-demand)"]
    for name in scenario_names_:
        rendered = [p.name for p in render_scenario(name).pools]
        rows = [format_row(r, rendered=rendered) for r in fit_table(name)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print(f"\nkarpenter-nodepools {name}; DaemonSet budget {DAEMONSET_BUDGET['cpu']}m CPU, {DAEMONSET_BUDGET['memory']} MiB per node", file=out)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)


if __name__ == "__main__":
    print_fit_table(sys.argv[1:] or scenario_names())
