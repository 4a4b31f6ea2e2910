"""The one door to Ray's internals: every private Ray name the app uses is reached through here.

Ray 2.60 has public names for most of what the app builds on (`ray.serve.llm`: LLMConfig,
build_llm_deployment; `ray.serve.llm.deployment.LLMServer`; `ray.serve.llm.ingress`: OpenAiIngress,
make_fastapi_ingress), and the app imports those where they are. What is left has no public name
and lives here: the names in PRIVATE_NAMES, and small functions for the private attributes of
Ray's objects that the app reads or sets. A Ray upgrade that moves or drops one fails in one place,
tests/unit/test_ray_door.py, with the name and what we use it for.

Importing this module imports nothing of Ray: each name loads its own Ray module when first asked
for (a module `__getattr__`, PEP 562). So the worker setup hook in local_binding reaches Serve's
replica module without loading Ray Serve LLM (and vLLM with it) into every Ray worker, and the CLI,
which must set Ray's environment before Ray is imported, imports Ray no earlier than it did.
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib
import uuid
from typing import Any, Dict, List, Optional, Tuple

_LLM = "ray.llm._internal.serve"

# Our name -> (Ray module, its name there or None for the module itself, what we use it for and
# why no public name does). One line each; the same words are in the error a missing name raises.
PRIVATE_NAMES: Dict[str, Tuple[str, Optional[str], str]] = {
    "to_model_metadata": (
        f"{_LLM}.core.configs.openai_api_models",
        "to_model_metadata",
        "the model cards OpenAiIngress takes (Ray's own OpenAiIngress docs import it from here too)",
    ),
    "build_direct_streaming_llm_deployment": (
        f"{_LLM}.core.ingress.builder",
        "_build_direct_streaming_llm_deployment",
        "the engine replica as the ingress with our bind_kwargs and user_config; build_openai_app takes neither",
    ),
    "build_openai_ingress_request_router": (
        f"{_LLM}.core.ingress.builder",
        "_build_openai_ingress_request_router",
        "the request router peer of a direct-streaming engine, as build_openai_app builds it",
    ),
    "RAY_SERVE_ENABLE_HA_PROXY": (
        "ray.serve._private.constants",
        "RAY_SERVE_ENABLE_HA_PROXY",
        "whether Serve runs HAProxy, as Ray read it at import; no public getter",
    ),
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": (
        "ray.serve._private.constants",
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY",
        "whether HAProxy hands request bodies to the direct-streaming router (prefix routing needs them)",
    ),
    "SetRequestIdMiddleware": (
        f"{_LLM}.core.ingress.middleware",
        "SetRequestIdMiddleware",
        "Ray's ingress app rebuilt without its allow-all CORS; no public way to drop that one middleware",
    ),
    "add_exception_handling_middleware": (
        f"{_LLM}.core.ingress.middleware",
        "add_exception_handling_middleware",
        "Ray's ingress app rebuilt without its allow-all CORS (its OpenAI-style error bodies)",
    ),
    "add_http_metrics_middleware": (
        f"{_LLM}.observability.metrics.fast_api_metrics",
        "add_http_metrics_middleware",
        "Ray's ingress app rebuilt without its allow-all CORS (its HTTP metrics)",
    ),
    "metrics_lifespan": (
        f"{_LLM}.observability.metrics.fast_api_metrics",
        "metrics_lifespan",
        "Ray's ingress app rebuilt without its allow-all CORS (its metrics lifespan)",
    ),
    "EmbeddingCompletionRequest": (
        f"{_LLM}.core.configs.openai_api_models",
        "EmbeddingCompletionRequest",
        "RAG embeds through the engine handle; the public EmbeddingRequest is a Union, not constructible",
    ),
    "TokenizeChatRequest": (
        f"{_LLM}.core.configs.openai_api_models",
        "TokenizeChatRequest",
        "RAG counts a chat prompt with the engine (LLMServer.tokenize); no public name for the request",
    ),
    "TokenizeCompletionRequest": (
        f"{_LLM}.core.configs.openai_api_models",
        "TokenizeCompletionRequest",
        "RAG counts each retrieved source's tokens with the engine (LLMServer.tokenize)",
    ),
    "ErrorResponse": (
        f"{_LLM}.core.configs.openai_api_models",
        "ErrorResponse",
        "isinstance on what the engine returns; the public ErrorResponse is a subclass the engine never makes",
    ),
    "AcceleratorType": (
        f"{_LLM}.core.configs.accelerators",
        "AcceleratorType",
        "the source of config.ACCELERATOR_TYPES, a copy so config needs no Ray; a unit test compares them",
    ),
    "serve_controller_client": (
        "ray.serve.context",
        "_get_global_client",
        "declarative deploys (deploy_apps) as the REST API and KubeRay do; public serve.run is imperative; "
        "the gateway's model readiness reads its get_serve_details() dict (see ingress.ModelReadiness)",
    ),
    "serve_replica": (
        "ray.serve._private.replica",
        None,
        "local_binding patches its add_port_to_grpc_server, which hard-codes `[::]:0`; no setting for it",
    ),
    "LoraModelLoader": (
        f"{_LLM}.utils.lora_serve_utils",
        "LoraModelLoader",
        "LLMServer's model_downloader seam: lora.LocalAdapterLoader extends it to local adapter folders",
    ),
    "DiskMultiplexConfig": (
        f"{_LLM}.core.configs.llm_config",
        "DiskMultiplexConfig",
        "what an adapter loader returns to LLMServer (the adapter's local path); no public name",
    ),
    "CloudFileSystem": (
        "ray.llm._internal.common.utils.cloud_utils",
        "CloudFileSystem",
        "lists a cloud lora.source's adapter folders as Ray Serve LLM's own /v1/models does",
    ),
    "lora_id_manager": (
        "ray.llm._internal.common.models",
        "global_id_manager",
        "the per-process int id vLLM needs for each loaded adapter, shared with Ray's own loader",
    ),
    "serve_request_context": (
        "ray.serve.context",
        "_serve_request_context",
        "shadow copies run outside the client's request, so Serve does not cancel them with it",
    ),
    "HAPROXY_CONFIG_TEMPLATE": (
        "ray.serve._private.haproxy_templates",
        "HAPROXY_CONFIG_TEMPLATE",
        "the HAProxy config whose wildcard listeners local_binding rewrites; a unit test reads it",
    ),
}

# Private attributes of Ray's objects that the functions below read or set: (Ray module, class,
# attribute). tests/unit/test_ray_door.py checks each is still there.
PRIVATE_ATTRIBUTES: Tuple[Tuple[str, str, str], ...] = (
    ("ray.serve._private.http_util", "ASGIAppReplicaWrapper", "_asgi_app"),
    ("ray.serve._private.http_util", "ASGIAppReplicaWrapper", "_set_asgi_app"),
    (f"{_LLM}.core.ingress.ingress", "OpenAiIngress", "_default_serve_handles"),
    # Overridden by with_engine_response_hook: the one place every engine response passes.
    (f"{_LLM}.core.ingress.ingress", "OpenAiIngress", "_get_response"),
    (f"{_LLM}.core.configs.llm_config", "LLMConfig", "_engine_config"),
    ("ray.serve.deployment", "Application", "_with_ingress_request_router"),
    (f"{_LLM}.engines.vllm.vllm_engine", "VLLMEngine", "_oai_serving_tokenization"),
    (f"{_LLM}.engines.vllm.vllm_engine", "VLLMEngine", "_app_state"),
    # Overridden by with_adapter_load_errors: where LLMServer loads a request's adapter.
    (f"{_LLM}.core.server.llm_server", "LLMServer", "_maybe_resolve_lora_from_multiplex"),
    # Read by forget_adapter: the replica's multiplexed loader and its Serve wrapper's push flag (the
    # wrapper's `models` cache too, checked in tests/unit/test_ray_door.py: a plain name).
    (f"{_LLM}.core.server.llm_server", "LLMServer", "_load_model"),
    ("ray.serve.multiplex", "_ModelMultiplexWrapper", "_push_multiplexed_replica_info"),
    # Replaced by outside_the_request in the request context its shadow copies run with.
    ("ray.serve.context", "_RequestContext", "_internal_request_id"),
    ("ray.serve.context", "_RequestContext", "cancel_on_parent_request_cancel"),
)


def __getattr__(name: str) -> Any:
    if name not in PRIVATE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute, used_for = PRIVATE_NAMES[name]
    where = module_name if attribute is None else f"{module_name}.{attribute}"
    try:
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        # AttributeError, so `from llm_serving._ray import X` says "cannot import name X" from here.
        raise AttributeError(
            f"{__name__}.{name}: this Ray has no `{where}` ({error}); we use it for: {used_for}. "
            f"Find its new place and update {__name__}.PRIVATE_NAMES."
        ) from error
    globals()[name] = value  # loaded once
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(PRIVATE_NAMES))


# Private keyword arguments of Ray's public functions that the functions below pass: (Ray module,
# function, keyword). tests/unit/test_ray_door.py checks each is still accepted.
PRIVATE_KEYWORDS: Tuple[Tuple[str, str, str], ...] = (
    ("ray", "init", "_metrics_export_port"),
    ("ray", "init", "_redis_password"),
)


def init_local_ray(*, metrics_export_port: Optional[int], redis_password: Optional[str] = None, **options: Any) -> None:
    """ray.init(**options) with Ray's Prometheus endpoint on `metrics_export_port` (None: Ray picks
    one), as `ray start --metrics-export-port` fixes it on a KubeRay pod, and with the password of
    the external Redis that GCS fault tolerance stores the GCS's tables in (`RAY_REDIS_ADDRESS` in
    the environment names the Redis; `ray start --redis-password` on a KubeRay head). ray.init takes
    both only as private keywords."""
    import ray

    if redis_password is not None:
        options["_redis_password"] = redis_password
    ray.init(_metrics_export_port=metrics_export_port, **options)


# Private attributes, each behind a small named function.


def asgi_app_of(ingress: Any) -> Any:
    """The ASGI app a Serve ingress replica serves (kept by Serve's ASGIAppReplicaWrapper)."""
    return ingress._asgi_app


def set_asgi_app(ingress: Any, app: Any) -> None:
    """Serve `app` from this ingress replica instead (with the lifespan handling Serve sets up)."""
    ingress._set_asgi_app(app)


def default_handles(ingress: Any) -> Dict[str, Any]:
    """OpenAiIngress's deployment handle per model id (the handles it routes requests with)."""
    return ingress._default_serve_handles


def clear_engine_config(llm_config: Any) -> None:
    """Forget the engine config LLMConfig cached, so the next get_engine_config() reads the
    config again (after the model source changed)."""
    llm_config._engine_config = None


def enable_engine_tokenize(engine: Any) -> None:
    """Make LLMServer.tokenize work on this vLLM: Ray 2.60's engine looks for vLLM's tokenize
    handler under its old app-state name (`openai_serving_tokenization`), vLLM 0.32 names it
    `serving_tokenization`, so every tokenize answered "does not support the 'tokenization' task".
    A no-op once Ray finds the handler itself."""
    if getattr(engine, "_oai_serving_tokenization", None) is None:
        engine._oai_serving_tokenization = getattr(getattr(engine, "_app_state", None), "serving_tokenization", None)


def with_ingress_request_router(server: Any, router: Any) -> Any:
    """`server` with `router` as its ingress request router peer (direct streaming)."""
    return server._with_ingress_request_router(router)


def with_engine_response_hook(ingress_cls: Any) -> Any:
    """`ingress_cls` (an OpenAiIngress) whose engine responses, for every route, pass through
    `self.engine_responses(responses, model)`: its private `_get_response` is the one place the
    engine handle's stream goes by before Ray Serve LLM peeks at it and streams it."""

    class EngineResponseHook(ingress_cls):
        async def _get_response(self, **kwargs: Any) -> Any:
            model = getattr(kwargs.get("body"), "model", None)
            async for response in self.engine_responses(super()._get_response(**kwargs), model):
                yield response

    return EngineResponseHook


def outside_the_request() -> contextvars.Context:
    """A copy of the current context in which Serve handle calls are not children of the request
    being served. Ray Serve cancels a direct-ingress request's in-flight handle calls when that
    request is cancelled (its client hung up, even just after its answer), so work that must
    outlive the request (a shadow copy) runs in this context: the same request id for the logs, a
    new internal id and no cancel-with-parent (ray/serve/_private/replica.py, _on_request_cancelled)."""
    request_context_var = __getattr__("serve_request_context")
    context = contextvars.copy_context()
    current = context.get(request_context_var)
    if current is not None:
        detached = dataclasses.replace(
            current, _internal_request_id=uuid.uuid4().hex, cancel_on_parent_request_cancel=False
        )
        context.run(request_context_var.set, detached)
    return context


def list_cloud_subfolders(folder_uri: str) -> List[str]:
    """Names of the folders directly under a cloud prefix (s3://, gs://, abfss://, azure://)."""
    return __getattr__("CloudFileSystem").list_subfolders(folder_uri)


def next_lora_int_id() -> int:
    """A new adapter id for vLLM, unique in this process (Ray's own loader takes ids from the same counter)."""
    return __getattr__("lora_id_manager").next()


def with_adapter_load_errors(server_cls: Any, error_cls: Any) -> Any:
    """`server_cls` (an LLMServer) whose failure to load a request's adapter raises
    `error_cls(model, reason)`: Ray 2.60 raises a bare ValueError/OSError there, which the ingress
    answers with 500. LLMServer's private `_maybe_resolve_lora_from_multiplex` is where every
    request's adapter is loaded (ray/llm/_internal/serve/core/server/llm_server.py)."""
    from ray import serve

    class AdapterLoadErrors(server_cls):
        async def _maybe_resolve_lora_from_multiplex(self) -> None:
            try:
                await super()._maybe_resolve_lora_from_multiplex()
            except Exception as error:
                model_id = serve.get_multiplexed_model_id()
                forget_adapter(self, model_id)
                raise error_cls(model_id, str(error) or type(error).__name__) from None

    return AdapterLoadErrors


# Where serve.multiplexed keeps its wrapper on a plain function (ray/serve/api.py, multiplexed).
MULTIPLEX_WRAPPER_ATTRIBUTE = "__serve_multiplex_wrapper"


def forget_adapter(server: Any, model_id: str) -> None:
    """Drop an adapter vLLM failed to load from the replica's multiplexed-model cache. Serve's
    wrapper (ray/serve/multiplex.py) caches what the loader returned once the adapter's files were
    found, before vLLM loads them; a failed adapter would so keep one of max_num_models_per_replica
    slots (evicting a good one) and be reported to the router as loaded on this replica."""
    wrapper = getattr(getattr(server, "_load_model", None), MULTIPLEX_WRAPPER_ATTRIBUTE, None)
    if wrapper is not None and wrapper.models.pop(model_id, None) is not None:
        wrapper._push_multiplexed_replica_info = True  # tell the router the replica's models changed
