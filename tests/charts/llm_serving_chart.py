"""Shared helpers for the llm-serving chart tests: render (always validated) and pick fields."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from tests.charts import render

CHART = "llm-serving"
CHART_DIR = render.CHARTS / CHART
PROFILES = render.profiles("llm-serving")
GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE_POOL_LABEL = "llm-serving.io/node-pool"

# The smallest complete GPU install: one model on one L40S group, keys from a Secret.
GPU_VALUES: Dict[str, Any] = {
    "app": {
        "models": {
            "chat": {"source": "org/chat-8b", "revision": "abc123", "accelerator_type": "L40S", "max_model_len": 8192}
        }
    },
    "apiKeys": {"existingSecret": "api-keys"},
    "workerGroups": {
        "l40s": {
            "gpus": 1,
            "acceleratorType": "L40S",
            "nodePool": "gpu-l40s",
            "minReplicas": 0,
            "maxReplicas": 2,
            "resources": {"requests": {"cpu": "3", "memory": "24Gi"}, "limits": {"memory": "28Gi"}},
        }
    },
}

# The smallest complete CPU install.
CPU_VALUES: Dict[str, Any] = {
    "app": {"models": {"tiny": {"source": "builtin://tiny-chat", "device": "cpu"}}, "gateway": {"auth": {"mode": "none"}}},
    "head": {"nodePool": ""},
    "workerGroups": {"cpu": {"gpus": 0, "minReplicas": 1, "maxReplicas": 1}},
}


def merged(base: Dict[str, Any], override: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A deep merge like helm's for maps (override wins; None deletes a key)."""
    result = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def render_chart(
    values: Optional[Dict[str, Any]] = None, values_files: List[Path] = (), **kwargs: Any
) -> List[Dict[str, Any]]:
    return render.render_chart(CHART, values_files=values_files, values=values, **kwargs)


def render_gpu(override: Optional[Dict[str, Any]] = None, **kwargs: Any) -> List[Dict[str, Any]]:
    return render_chart(merged(GPU_VALUES, override), **kwargs)


def render_cpu(override: Optional[Dict[str, Any]] = None, **kwargs: Any) -> List[Dict[str, Any]]:
    return render_chart(merged(CPU_VALUES, override), **kwargs)


def rayservice(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return render.one(objects, "RayService")


def serve_config(objects_or_rayservice: Any) -> Dict[str, Any]:
    rs = objects_or_rayservice if isinstance(objects_or_rayservice, dict) else rayservice(objects_or_rayservice)
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def app_args(objects_or_rayservice: Any) -> Dict[str, Any]:
    (application,) = serve_config(objects_or_rayservice)["applications"]
    return application["args"]


def cluster(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return rayservice(objects)["spec"]["rayClusterConfig"]


def head_pod(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return cluster(objects)["headGroupSpec"]["template"]


def worker_group(objects: List[Dict[str, Any]], name: str) -> Dict[str, Any]:
    groups = {group["groupName"]: group for group in cluster(objects).get("workerGroupSpecs", [])}
    assert name in groups, f"no worker group {name}; have {sorted(groups)}"
    return groups[name]


def ray_container(pod_template: Dict[str, Any]) -> Dict[str, Any]:
    """KubeRay's convention: the Ray container is the first one."""
    return pod_template["spec"]["containers"][0]


def env(container: Dict[str, Any]) -> Dict[str, Any]:
    """name -> value, or name -> valueFrom for references."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def volumes(pod_template: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {volume["name"]: volume for volume in pod_template["spec"].get("volumes", [])}


def mounts(container: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}


def helm_error(values: Dict[str, Any], **kwargs: Any) -> str:
    """Render values that must fail; return helm's message (what the user sees)."""
    with pytest.raises(render.HelmError) as error:
        render_chart(values, **kwargs)
    return str(error.value)
