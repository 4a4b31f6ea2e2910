"""Public entry point: `llm_serving.app:build_app` is the RayService serveConfigV2 import_path."""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

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
from llm_serving.batch.priority import BATCH_WORKER_NICENESS_ENV
from llm_serving.batch.runner import BatchRunner
from llm_serving.config import AppConfig, LoraConfig, ModelConfig, parse_app_config
from llm_serving.engine_args import engine_kwargs, gpu_bundle, model_feature_runtime_env
from llm_serving.ingress import GatewayIngress
from llm_serving.rag.store import build_rag_store_deployment
from llm_serving.serve_config import GATEWAY_DEPLOYMENT
from llm_serving.server import GatewayLLMServer


def to_llm_config(name: str, model: ModelConfig) -> LLMConfig:
    """One model of our config as Ray Serve LLM's LLMConfig."""
    lora_config = lora_settings(model.lora) if model.lora is not None else None
    hardware: Dict[str, Any]
    if model.device == "cpu":
        hardware = {"accelerator_config": {"kind": "cpu"}, "placement_group_config": {"bundles": [{"CPU": 1}]}}
    else:
        # One GPU bundle per tensor-parallel rank, packed on one node.
        hardware = {
            "accelerator_type": model.accelerator_type,
            "placement_group_config": {
                "bundles": [gpu_bundle(model) for _ in range(model.tensor_parallel_size)],
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
        engine_kwargs=engine_kwargs(model),
        deployment_config=deployment_config,
        experimental_configs={"stream_batching_interval_ms": model.stream_batching_interval_ms},
        runtime_env=model_feature_runtime_env(model),
        server_cls=GatewayLLMServer,
        lora_config=lora_config,
        log_engine_metrics=True,
        **hardware,
    )


def lora_settings(lora: LoraConfig) -> Dict[str, Any]:
    """Ray Serve LLM's LoraConfig: turns on Serve's model multiplexing with at most
    max_adapters_per_replica adapters per replica. Its dynamic_lora_loading_path takes only cloud
    prefixes; a local folder is given to the engine replicas instead (bind argument
    `adapters_source`, lora.LocalAdapterLoader)."""
    settings: Dict[str, Any] = {
        "max_num_adapters_per_replica": lora.max_adapters_per_replica,
        "download_timeout_s": lora.download_timeout_s,
    }
    if lora.is_remote:
        settings["dynamic_lora_loading_path"] = lora.source
    return settings


def llm_deployment(llm_config: LLMConfig, model: ModelConfig) -> Application:
    """One model's engine deployment; a LoRA model's replicas learn where its adapters are."""
    bind_kwargs = {"adapters_source": model.lora.source} if model.lora is not None else None
    return build_llm_deployment(llm_config, bind_kwargs=bind_kwargs)


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


def direct_model_name(config: AppConfig) -> Optional[str]:
    """The model whose engine replica may be the ingress: the only one, or gateway.direct_model."""
    if len(config.models) == 1:
        return next(iter(config.models))
    return config.gateway.direct_model


def uses_direct_streaming(config: AppConfig) -> bool:
    """The engine replica can be the ingress only for one model (the only one, or
    gateway.direct_model) and with Ray's HAProxy in front."""
    direct = direct_model_name(config)
    return (
        config.gateway.direct_streaming
        and direct is not None
        # RAG and the Batch API run in the direct replica only when gateway.direct_model asks for it:
        # otherwise they keep the gateway deployment, which answers their routes (ingestion, batch
        # status) while no engine replica runs.
        and (config.gateway.direct_model is not None or (config.rag is None and config.batch is None))
        # Adapters are checked and listed in the gateway deployment (and Ray's direct path needs
        # RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1 for them, core/ingress/builder.py).
        and all(model.lora is None for model in config.models.values())
        and RAY_SERVE_ENABLE_HA_PROXY  # as Ray itself read it when it was imported
        # The other models' handles carry the prompt: only the direct model's router lacks it.
        and not prefix_routing_needs_the_gateway(config.models[direct])
    )


def build_app(args: Dict[str, Any]) -> Application:
    """Build the Serve application from the app's args (see llm_serving.config.AppConfig)."""
    config = parse_app_config(args)
    llm_configs = {name: to_llm_config(name, model) for name, model in config.models.items()}
    gateway = config.gateway.model_dump()
    # The gateway's live config (traffic) is not built here: it is the Serve config's user_config
    # of the deployment named GATEWAY_DEPLOYMENT, in both topologies (see serve_config).

    direct = direct_model_name(config) if uses_direct_streaming(config) else None
    # Every model's engine deployment but the direct model's, which is the ingress itself. Serve binds
    # one deployment once, so the gateway and the batch runner share these.
    engines = {name: llm_deployment(c, config.models[name]) for name, c in llm_configs.items() if name != direct}
    model_cards = {name: to_model_metadata(name, c) for name, c in llm_configs.items()}
    features: Dict[str, Any] = {}  # RAG and the Batch API, for whichever deployment is the ingress
    if config.rag is not None:
        embedding_models = sorted(name for name, model in config.models.items() if model.task == "embed")
        features["rag"] = {"config": config.rag.model_dump(), "embedding_models": embedding_models}
        features["rag_store"] = build_rag_store_deployment(config.rag)
    if config.batch is not None:
        # The runner names the direct model's deployment rather than binding it: that deployment
        # binds the runner, and Serve's graph has no cycles.
        runner_engines = {**engines, direct: GATEWAY_DEPLOYMENT} if direct is not None else engines
        features["batch"] = config.batch.model_dump()
        features["batch_runner"] = build_batch_runner(config, runner_engines)

    if direct is not None:
        llm_config = llm_configs[direct]
        # With several models, the direct model's replica reaches the others over handles
        # (server.GatewayLLMServer); /v1/models lists every model's card.
        bind_kwargs: Dict[str, Any] = {"gateway": gateway, **features}
        if engines:
            bind_kwargs["other_models"] = engines
            bind_kwargs["model_cards"] = model_cards
        # Ray Serve LLM names the engine deployment after the model; the override comes after that.
        server = build_direct_streaming_llm_deployment(
            llm_config, bind_kwargs=bind_kwargs, override_serve_options={"name": GATEWAY_DEPLOYMENT}
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
    return serve.deployment(GatewayIngress, name=GATEWAY_DEPLOYMENT, **ingress_options).bind(
        llm_deployments=engines,
        model_cards=model_cards,
        gateway=gateway,
        adapter_sources={name: m.lora.source for name, m in config.models.items() if m.lora is not None},
        **features,
    )


BATCH_RUNNER_DEPLOYMENT = "BatchRunner"


def build_batch_runner(config: AppConfig, llm_deployments: Dict[str, Union[Application, str]]) -> Application:
    """One BatchRunner replica beside the gateway, with the same engine deployments (Serve binds one
    deployment once, so its rows reach the replicas online requests use); a str names a deployment
    of the same application (the direct model's, which binds the runner). It asks no CPU: it waits
    on Ray Data, whose own tasks and actor take the cluster's CPUs."""
    assert config.batch is not None
    models = {
        name: {
            "task": model.task,
            "max_ongoing_requests": model.max_ongoing_requests,
            "max_replicas": model.autoscaling.max_replicas,
        }
        for name, model in config.models.items()
    }
    # Ray Data's workers inherit this runtime env. They create engine handles outside an event loop
    # (ray/llm/_internal/batch/stages/serve_deployment_stage.py, in the actor's __init__), which a
    # handle whose router shares the caller's loop refuses: RAY_SERVE_THROUGHPUT_OPTIMIZED (which
    # `llm-serving serve` and the chart set) turns that sharing on (ray/serve/_private/constants.py).
    # BATCH_WORKER_NICENESS_ENV: the nice value those workers take (batch/priority.py); it also keeps
    # them in a worker pool of their own, as Ray reuses a worker only within one runtime env.
    runtime_env = {
        "env_vars": {
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
            BATCH_WORKER_NICENESS_ENV: str(config.batch.worker_niceness),
        }
    }
    # The runner reads the keys sources itself as a batch's lines start (a reloaded key applies).
    auth = config.gateway.auth
    api_keys = auth.api_keys.model_dump() if auth.mode == "api_key" else None
    return serve.deployment(
        BatchRunner,
        name=BATCH_RUNNER_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
    ).bind(config.batch.model_dump(), llm_deployments, models, api_keys)
