"""Public entry point: `llm_serving.app:build_app` is the RayService serveConfigV2 import_path."""

from __future__ import annotations

from typing import Any, Dict

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from llm_serving._ray import (
    RAY_SERVE_ENABLE_HA_PROXY,
    RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY,
    build_direct_streaming_llm_deployment,
    build_openai_ingress_request_router,
    to_model_metadata,
    with_ingress_request_router,
)
from llm_serving.config import WORKER_GROUP_RESOURCE_PREFIX, AppConfig, ModelConfig, parse_app_config
from llm_serving.ingress import GatewayIngress
from llm_serving.rag.store import build_rag_store_deployment
from llm_serving.serve_config import GATEWAY_DEPLOYMENT
from llm_serving.server import GatewayLLMServer

# What one bundle asks of its worker group's resource (a node has 1): Ray Serve LLM's own share for
# the accelerator-type resource, so up to 1000 bundles fit on one node and only GPUs limit them.
WORKER_GROUP_BUNDLE_SHARE = 0.001


def to_llm_config(name: str, model: ModelConfig) -> LLMConfig:
    """One model of our config as Ray Serve LLM's LLMConfig."""
    engine_kwargs = dict(model.engine_kwargs)
    engine_kwargs["tensor_parallel_size"] = model.tensor_parallel_size
    if model.max_model_len is not None:
        engine_kwargs["max_model_len"] = model.max_model_len
    if model.revision is not None:
        engine_kwargs["revision"] = model.revision
    if model.task == "embed":
        engine_kwargs["runner"] = "pooling"

    hardware: Dict[str, Any]
    if model.device == "cpu":
        hardware = {"accelerator_config": {"kind": "cpu"}, "placement_group_config": {"bundles": [{"CPU": 1}]}}
    else:
        # One GPU bundle per tensor-parallel rank, packed on one node.
        bundle: Dict[str, float] = {"GPU": 1}
        if model.worker_group is not None:
            # Tie the replica to its worker group: each GPU group advertises 1 of its own custom
            # resource per node (the group's `resources` field, templates/rayservice.yaml), and
            # every bundle asks a sliver of it, as Ray Serve LLM itself does for the accelerator
            # type (ray/llm/_internal/serve/core/configs/accelerators.py, GPUAccelerator
            # .default_bundles: 0.001 of `accelerator_type:<type>`). A custom resource rather than
            # node labels and a bundle_label_selector: Serve LLM 2.60's PlacementGroupConfig
            # (ray/llm/_internal/common/placement.py) forbids extra keys and create_placement_group
            # passes only bundles and strategy, and a group's `resources` field is what the
            # autoscaler reads to start a group from zero (ray/autoscaler/_private/kuberay/
            # autoscaling_config.py, _get_custom_resources).
            bundle[WORKER_GROUP_RESOURCE_PREFIX + model.worker_group] = WORKER_GROUP_BUNDLE_SHARE
        hardware = {
            "accelerator_type": model.accelerator_type,
            "placement_group_config": {
                "bundles": [dict(bundle) for _ in range(model.tensor_parallel_size)],
                "strategy": "STRICT_PACK",
            },
        }

    deployment_config: Dict[str, Any] = {
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
        "autoscaling_config": model.autoscaling.to_serve(),
    }
    if model.request_router is not None:
        # Serve gives every handle to this deployment the router (ray/serve/config.py,
        # RequestRouterConfig): the gateway's handles, or the direct-streaming LLMRouter's.
        deployment_config["request_router_config"] = model.request_router.to_serve()

    return LLMConfig(
        model_loading_config={"model_id": name, "model_source": model.source},
        engine_kwargs=engine_kwargs,
        deployment_config=deployment_config,
        experimental_configs={"stream_batching_interval_ms": model.stream_batching_interval_ms},
        server_cls=GatewayLLMServer,
        log_engine_metrics=True,
        **hardware,
    )


def prefix_routing_needs_the_gateway(model: ModelConfig) -> bool:
    """With direct streaming, HAProxy asks Ray's LLMRouter for a replica, and hands it the request
    body only when Ray runs with RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1; without the body
    the affinity router has no prompt and falls back to load balancing (ray/llm/_internal/serve/
    core/ingress/router.py, LLMRouter.route). The gateway's handles always carry the prompt."""
    router = model.request_router
    return (
        router is not None
        and router.policy == "prefix_cache_affinity"
        and not RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY
    )


def uses_direct_streaming(config: AppConfig) -> bool:
    """The engine replica can be the ingress only with one model and Ray's HAProxy in front."""
    return (
        config.gateway.direct_streaming
        and len(config.models) == 1
        and config.rag is None  # RAG lives in the gateway deployment
        and RAY_SERVE_ENABLE_HA_PROXY  # as Ray itself read it when it was imported
        and not any(prefix_routing_needs_the_gateway(model) for model in config.models.values())
    )


def build_app(args: Dict[str, Any]) -> Application:
    """Build the Serve application from the app's args (see llm_serving.config.AppConfig)."""
    config = parse_app_config(args)
    llm_configs = {name: to_llm_config(name, model) for name, model in config.models.items()}
    gateway = config.gateway.model_dump()
    # The gateway's live config (traffic) is not built here: it is the Serve config's user_config
    # of the deployment named GATEWAY_DEPLOYMENT, in both topologies (see serve_config).

    if uses_direct_streaming(config):
        (llm_config,) = llm_configs.values()
        # Ray Serve LLM names the engine deployment after the model; the override comes after that.
        server = build_direct_streaming_llm_deployment(
            llm_config, bind_kwargs={"gateway": gateway}, override_serve_options={"name": GATEWAY_DEPLOYMENT}
        )
        router = build_openai_ingress_request_router(server=server, llm_config=llm_config)
        return with_ingress_request_router(server, router)

    ingress = config.gateway.ingress
    all_scale_to_zero = all(m.autoscaling.min_replicas == 0 for m in config.models.values())
    ingress_options = {
        "max_ongoing_requests": ingress.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": 0 if all_scale_to_zero else ingress.min_replicas,
            "initial_replicas": ingress.min_replicas,
            "max_replicas": ingress.max_replicas,
            "target_ongoing_requests": ingress.target_ongoing_requests,
        },
    }
    rag_kwargs = {}
    if config.rag is not None:
        embedding_models = sorted(name for name, model in config.models.items() if model.task == "embed")
        rag_kwargs = {
            "rag": {"config": config.rag.model_dump(), "embedding_models": embedding_models},
            "rag_store": build_rag_store_deployment(config.rag),
        }
    return serve.deployment(GatewayIngress, name=GATEWAY_DEPLOYMENT, **ingress_options).bind(
        llm_deployments={name: build_llm_deployment(c) for name, c in llm_configs.items()},
        model_cards={name: to_model_metadata(name, c) for name, c in llm_configs.items()},
        gateway=gateway,
        **rag_kwargs,
    )
