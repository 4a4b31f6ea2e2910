"""The serving app's build-time configuration: the single source of truth for what `build_app` accepts.

A profile's `app:` block, minus `traffic`, is the Serve application's `args` (the chart and
llm_serving.serve_config both render it so); `parse_app_config` is their one validation, run by
`build_app` and, before deploying, by `llm-serving serve`. `traffic`, the live part, has its own
model and validation (llm_serving.traffic_config). The chart's values schema for `app:` is
generated from both models (ci/gen_values_schema.py).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The accelerator types Ray Serve LLM accepts, so the chart's schema rejects a typo at `helm template`.
# Copied, in order, from Ray 2.60's enum (ray/llm/_internal/serve/core/configs/accelerators.py,
# AcceleratorType) so that this module, and the schema generator that imports it, need no Ray;
# tests/unit/test_ray_door.py fails when the copy and the installed Ray's enum differ.
# fmt: off
RayAcceleratorType = Literal[
    "V100", "P100", "T4", "P4", "K80", "A10G", "L4", "L40S", "A100", "H100", "H200", "H20", "B200", "B300",
    "GB200", "GB300", "RTX-PRO-6000", "Intel-GPU-Max-1550", "Intel-GPU-Max-1100", "Intel-GAUDI",
    "AMD-Instinct-MI100", "AMD-Instinct-MI250X", "AMD-Instinct-MI250X-MI250", "AMD-Instinct-MI210",
    "AMD-Instinct-MI300A", "AMD-Instinct-MI300X-OAM", "AMD-Instinct-MI300X-HF", "AMD-Instinct-MI308X",
    "AMD-Instinct-MI325X-OAM", "AMD-Instinct-MI350X-OAM", "AMD-Instinct-MI355X-OAM",
    "AMD-Radeon-R9-200-HD-7900", "AMD-Radeon-HD-7900", "aws-neuron-core", "TPU-V2", "TPU-V3", "TPU-V4",
    "TPU-V5P", "TPU-V5LITEPOD", "TPU-V6E", "TPU-V7X", "Ascend910B", "Ascend910B4", "MXC500", "MXC550",
    "FURIOSA_RNGD", "M1", "M1-Pro", "M1-Max", "M1-Ultra", "M2", "M2-Pro", "M2-Max", "M2-Ultra", "M3",
    "M3-Pro", "M3-Max", "Apple-Silicon", "A100-40G", "A100-80G", "MOBILINT_ARIES", "MOBILINT_REGULUS"
]
# fmt: on
ACCELERATOR_TYPES = get_args(RayAcceleratorType)

# Model features (tool calling, reasoning): the parser names vLLM 0.32 registers, copied in order
# from its ToolParserManager (vllm/tool_parsers/__init__.py) and ReasoningParserManager
# (vllm/reasoning/__init__.py), `list_registered()`, so that this module needs no vLLM and the chart's
# schema rejects a typo; tests/unit/test_model_features.py fails when a copy and the installed vLLM differ.
# fmt: off
ToolCallParser = Literal[
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32",
    "deepseek_v4", "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45", "glm47",
    "granite", "granite-20b-fc", "granite4", "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling",
    "internlm", "jamba", "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json",
    "llama4_pythonic", "longcat", "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral", "muse_glimmer",
    "olmo3", "openai", "phi4_mini_json", "plamo3", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_json",
    "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam"
]
ReasoningParser = Literal[
    "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4", "deepseek_v41",
    "ernie45", "gemma4", "glm45", "glm47", "granite", "granite_thinking_parser", "hf", "holo2", "hunyuan_a13b",
    "hy_v3", "hy_v4", "inkling", "k2_horizon", "kimi_k2", "kimi_k3", "ling3", "mimo", "minicpmv", "minimax_m2",
    "minimax_m2_append_think", "minimax_m3", "mistral", "muse_glimmer", "nemotron_v3", "olmo3", "openai_gptoss",
    "plamo3", "poolside_v1", "qwen3", "seed_oss", "step3", "step3p5"
]
# fmt: on
TOOL_CALL_PARSERS = get_args(ToolCallParser)
REASONING_PARSERS = get_args(ReasoningParser)

# The system instructions of a RAG chat unless `rag.instructions` says otherwise.
DEFAULT_RAG_INSTRUCTIONS = (
    "Answer the user's question using the numbered sources below. Cite the sources you use as [1], [2]. "
    "If the sources do not contain the answer, say that you do not know."
)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$"

# A worker group name as the chart's values schema allows it (workerGroups keys).
WORKER_GROUP_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
# The Ray custom resource each GPU worker group of the chart advertises (1 per node, in the group's
# `resources` field, templates/rayservice.yaml); a model tied to the group asks a sliver of it per
# bundle, as Ray Serve LLM does for `accelerator_type:<type>`. Ray reserves `<name>_group_<id>` for
# placement-group resources (ray/_private/utils.py, PLACEMENT_GROUP_*_RESOURCE_PATTERN): group names
# have no underscore, so this name never looks like one.
WORKER_GROUP_RESOURCE_PREFIX = "llm-serving-group:"

# Engine arguments the app derives from first-class fields; setting them twice would let the two
# copies disagree (for example tensor parallelism and the GPU bundles reserved for it).
ENGINE_KWARGS_OWNED_BY_APP = {
    "model": "source",
    "served_model_name": "the model's key under `models`",
    "tensor_parallel_size": "tensor_parallel_size",
    "max_model_len": "max_model_len",
    "revision": "revision",
    "runner": "task",
    # LoRA: the engine's adapter slots follow `lora` (one place says how many adapters a replica holds).
    "enable_lora": "lora",
    "max_lora_rank": "lora.max_rank",
    "max_loras": "lora.max_adapters_per_replica",
    # Model features (tool calling, chat template, reasoning, structured output).
    "enable_auto_tool_choice": "tool_call_parser",
    "tool_call_parser": "tool_call_parser",
    "chat_template": "chat_template",
    "reasoning_parser": "reasoning_parser",
}


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling for one model's engine replicas."""

    min_replicas: int = Field(1, ge=0, description="Fewest engine replicas; 0 lets the model scale to zero when idle.")
    max_replicas: int = Field(1, ge=1, description="Most engine replicas the autoscaler may start.")
    initial_replicas: Optional[int] = Field(
        None, ge=0, description="Replicas started at deploy time; defaults to min_replicas (at least 1 when min is 0)."
    )
    target_ongoing_requests: float = Field(
        16, gt=0, description="Requests in flight per replica that the autoscaler aims for; more scales up."
    )
    upscale_delay_s: float = Field(30, ge=0, description="Seconds the load must stay high before adding a replica.")
    downscale_delay_s: float = Field(
        600, ge=0, description="Seconds the load must stay low before removing a replica (engines are slow to start)."
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas}); "
                "raise max_replicas or lower min_replicas"
            )
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    def to_serve(self) -> Dict[str, Any]:
        config = self.model_dump(exclude_none=True)
        if self.min_replicas == 0 and self.initial_replicas is None:
            # Start one replica so a fresh deploy is ready to answer; it scales to zero when idle.
            config["initial_replicas"] = 1
        return config


# The LoRA ranks vLLM's engine accepts as max_lora_rank (vllm/config/lora.py, MaxLoRARanks).
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
# Where a model's adapters may live: what Ray Serve LLM downloads from (its LoraConfig accepts only
# these schemes, ray/llm/_internal/serve/core/configs/llm_config.py), a local or mounted folder, or
# a folder of built-in adapters (llm_serving.builtin_models).
REMOTE_ADAPTER_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
# The folders of adapters llm_serving.builtin_models makes (its BUILTIN_ADAPTERS; a unit test pins the two).
BUILTIN_ADAPTER_FOLDERS = ("tiny-chat-adapters",)


class LoraConfig(StrictModel):
    """LoRA adapters of one model, served multiplexed: clients call `model: "<model>:<adapter>"`, an
    engine replica loads an adapter on its first request, and Ray Serve routes later requests for
    that adapter to the replicas that hold it."""

    source: str = Field(
        ...,
        min_length=1,
        description=(
            "Folder holding one subfolder per adapter (named after the adapter, each in peft's format: "
            "adapter_config.json + adapter_model.safetensors): an s3://, gs://, abfss:// or azure:// prefix, "
            "an absolute path on a mounted volume (e.g. a PVC), or builtin://tiny-chat-adapters (made offline)."
        ),
    )
    max_adapters_per_replica: int = Field(
        4,
        ge=1,
        le=256,
        description=(
            "Adapters one engine replica holds at once (Ray Serve's multiplexing, and vLLM's max_loras); the "
            "least recently used is dropped to load another."
        ),
    )
    max_rank: LoraRank = Field(16, description="Largest adapter rank (r) the engine accepts (vLLM's max_lora_rank).")
    download_timeout_s: float = Field(
        30, gt=0, description="Seconds one adapter's download from a cloud source may take (Ray Serve LLM's default)."
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        builtin = value.startswith("builtin://") and value[len("builtin://") :] in BUILTIN_ADAPTER_FOLDERS
        if not (value.startswith(REMOTE_ADAPTER_SCHEMES) or value.startswith("/") or builtin):
            raise ValueError(
                f"lora.source {value!r} is not an adapters folder; use an s3://, gs://, abfss:// or azure:// "
                "prefix, an absolute path (e.g. /adapters on a mounted volume) or builtin://tiny-chat-adapters"
            )
        return value.rstrip("/")

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(REMOTE_ADAPTER_SCHEMES)


# ---- Request routing (issue 16): which engine replica of a model takes each request. ----
# Ray Serve LLM's public PrefixCacheAffinityRouter (ray/serve/llm/request_router.py), by import path
# so that this module needs no Ray: Serve resolves a string itself (ray/serve/config.py,
# RequestRouterConfig.request_router_class). power_of_two needs no path: it is the class Serve's
# RequestRouterConfig defaults to (DEFAULT_REQUEST_ROUTER_PATH, PowerOfTwoChoicesRequestRouter).
PREFIX_CACHE_AFFINITY_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
# Settings that only the prefix-cache affinity router reads (its initialize_state keywords).
PREFIX_CACHE_AFFINITY_SETTINGS = (
    "imbalanced_threshold",
    "match_rate_threshold",
    "eviction",
)


class PrefixTreeEvictionConfig(StrictModel):
    """Trimming of the affinity router's prefix tree (the prompts it remembers per replica)."""

    threshold_chars: int = Field(
        400_000, ge=1, description="Characters held in the prefix tree that start an eviction."
    )
    target_chars: int = Field(360_000, ge=1, description="Characters an eviction trims the prefix tree down to.")
    interval_s: int = Field(10, ge=1, description="Seconds between checks of the prefix tree's size.")

    @model_validator(mode="after")
    def _target_below_threshold(self) -> PrefixTreeEvictionConfig:
        if self.target_chars > self.threshold_chars:
            raise ValueError(
                f"eviction.target_chars ({self.target_chars}) is greater than eviction.threshold_chars "
                f"({self.threshold_chars}); lower target_chars"
            )
        return self


class RequestRoutingConfig(StrictModel):
    """How Ray Serve picks one of a model's engine replicas for each request."""

    policy: Literal["power_of_two", "prefix_cache_affinity"] = Field(
        ...,
        description=(
            "power_of_two: Serve's default, the less loaded of two random replicas. prefix_cache_affinity: "
            "Ray Serve LLM's PrefixCacheAffinityRouter, which sends a prompt to the replica that served the "
            "longest matching prefix (its vLLM prefix cache holds it) while the load is balanced."
        ),
    )
    imbalanced_threshold: Optional[int] = Field(
        None,
        ge=0,
        description=(
            "prefix_cache_affinity: when the replicas' queue lengths differ by more than this, route by load "
            "(power of two) instead of by prefix; empty: never (Ray's default), always route by prefix."
        ),
    )
    match_rate_threshold: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "prefix_cache_affinity: the smallest share of a prompt's characters that must match a replica's "
            "remembered prefix to follow it; below it the request goes to the replica that holds the least."
        ),
    )
    eviction: Optional[PrefixTreeEvictionConfig] = Field(
        None,
        description=(
            "prefix_cache_affinity: trim the router's prefix tree as it grows; empty: never trim (Ray's default)."
        ),
    )

    @model_validator(mode="after")
    def _affinity_settings_need_affinity(self) -> RequestRoutingConfig:
        if self.policy != "prefix_cache_affinity":
            stray = [key for key in PREFIX_CACHE_AFFINITY_SETTINGS if key in self.model_fields_set]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} only apply to policy: prefix_cache_affinity; remove them or set that policy"
                )
        return self

    def to_serve(self) -> Dict[str, Any]:
        """Serve's request_router_config (ray/serve/config.py, RequestRouterConfig)."""
        config: Dict[str, Any] = {}  # Serve's defaults: power of two
        if self.policy == "prefix_cache_affinity":
            config["request_router_class"] = PREFIX_CACHE_AFFINITY_ROUTER
            # The keywords of PrefixCacheAffinityRouter.initialize_state (ray/llm/_internal/serve/
            # routing_policies/prefix_aware/prefix_aware_router.py); float("inf") is its "never".
            kwargs: Dict[str, Any] = {"match_rate_threshold": self.match_rate_threshold}
            if self.imbalanced_threshold is not None:
                kwargs["imbalanced_threshold"] = self.imbalanced_threshold
            if self.eviction is not None:
                kwargs.update(
                    do_eviction=True,
                    eviction_threshold_chars=self.eviction.threshold_chars,
                    eviction_target_chars=self.eviction.target_chars,
                    eviction_interval_secs=self.eviction.interval_s,
                )
            config["request_router_kwargs"] = kwargs
        return config


class ModelConfig(StrictModel):
    """One model served behind the gateway; the key under `models` is its public name."""

    source: str = Field(
        ...,
        min_length=1,
        description=(
            "Where the weights come from: a Hugging Face id (org/name), an s3:// or gs:// URI, a path "
            "on a mounted volume, or builtin://tiny-chat / builtin://all-minilm-l6-v2 (made offline)."
        ),
    )
    revision: Optional[str] = Field(None, description="Hugging Face revision (commit, tag or branch) to pin.")
    task: Literal["generate", "embed"] = Field(
        "generate", description="generate: chat and completions; embed: /v1/embeddings (vLLM pooling runner)."
    )
    device: Literal["gpu", "cpu"] = Field("gpu", description="Run the engine on GPUs or on the CPU (vLLM CPU build).")
    accelerator_type: Optional[RayAcceleratorType] = Field(
        None, description="GPU type the replica must land on (Ray accelerator type, e.g. L40S, A10G, H100)."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, le=16, description="GPUs one engine spans; one placement-group bundle is reserved per GPU."
    )
    worker_group: Optional[str] = Field(
        None,
        pattern=WORKER_GROUP_PATTERN,
        description=(
            "Name of the chart's worker group (a key of workerGroups) whose nodes the replica must land on; "
            "required when a profile has more than one GPU worker group, so a small model cannot take a GPU "
            "of the node a tensor-parallel model needs."
        ),
    )
    max_model_len: Optional[int] = Field(None, ge=16, description="Longest prompt plus completion, in tokens.")
    engine_kwargs: Dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM engine arguments, passed through as-is."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one engine replica takes at once; more wait in the queue (back-pressure)."
    )
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests that may wait for a replica before new ones get 503; -1 means no bound."
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica autoscaling.")
    stream_batching_interval_ms: float = Field(
        0,
        ge=0,
        description="Ray Serve LLM's stream batching window; 0 sends each token as it comes (lowest latency).",
    )
    lora: Optional[LoraConfig] = Field(
        None, description="LoRA adapters served on this model's replicas (`model: <model>:<adapter>`); off when absent."
    )
    # Model features: what the engine's OpenAI frontend parses out of the model's text.
    tool_call_parser: Optional[ToolCallParser] = Field(
        None,
        description=(
            "Turns tool calling on (tool_choice auto, required or a named function) with the vLLM parser "
            "for the model's tool-call format: llama3_json for Llama 3.1/3.3, hermes for Qwen2.5 and "
            "Hermes-style templates. Unset: tool calling is off and requests with tools get 400 unless "
            "tool_choice is none."
        ),
    )
    chat_template: Optional[str] = Field(
        None,
        min_length=1,
        description=(
            "Jinja chat template replacing the model's own: the template text, or the path of a file on "
            "the replica. A model that calls tools needs one that renders `tools` and `tool` messages."
        ),
    )
    reasoning_parser: Optional[ReasoningParser] = Field(
        None,
        description=(
            "vLLM parser that splits a reasoning model's thinking into `reasoning_content` (e.g. deepseek_r1, "
            "qwen3); unset: the thinking stays in `content`."
        ),
    )
    request_router: Optional[RequestRoutingConfig] = Field(
        None,
        description=(
            "Which engine replica takes each request; empty: Ray's default (power of two behind the gateway, "
            "round robin with direct streaming). prefix_cache_affinity with direct streaming needs Ray "
            "started with RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1, otherwise the gateway path is used."
        ),
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _engine_kwargs_not_owned(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        for key, owner in ENGINE_KWARGS_OWNED_BY_APP.items():
            if key in value:
                raise ValueError(f"engine_kwargs.{key} is set by the app; set {owner} instead")
        return value

    @model_validator(mode="after")
    def _device_rules(self) -> ModelConfig:
        if self.device == "cpu":
            if self.accelerator_type is not None:
                raise ValueError("accelerator_type applies to GPUs; remove it or set device: gpu")
            if self.tensor_parallel_size != 1:
                raise ValueError("tensor_parallel_size must be 1 with device: cpu")
            if self.worker_group is not None:
                raise ValueError("worker_group applies to GPUs; remove it or set device: gpu")
        return self

    @model_validator(mode="after")
    def _lora_rules(self) -> ModelConfig:
        if self.lora is not None and self.task != "generate":
            raise ValueError("lora applies to task: generate; remove lora from this embed model")
        return self

    @model_validator(mode="after")
    def _features_need_a_chat_model(self) -> ModelConfig:
        if self.task == "embed":
            # (chat_template applies to embeddings too: vLLM renders `messages` of /v1/embeddings with it)
            for feature in ("tool_call_parser", "reasoning_parser"):
                if getattr(self, feature) is not None:
                    raise ValueError(f"{feature} applies to chat models; remove it or set task: generate")
        return self

    @model_validator(mode="after")
    def _prefix_routing_needs_prompts(self) -> ModelConfig:
        # The affinity router reads `messages` or `prompt` off every request and raises on others,
        # such as an embedding request's `input` (prefix_aware_router.py, _extract_text_from_request).
        if self.request_router is not None and self.request_router.policy == "prefix_cache_affinity":
            if self.task != "generate":
                raise ValueError(
                    "request_router.policy prefix_cache_affinity routes chat and completion prompts; "
                    "use it with task: generate, or remove request_router"
                )
        return self


class ApiKeysConfig(StrictModel):
    """Where API keys come from. Each source holds a YAML or JSON document `{keys: [...]}`."""

    file: Optional[str] = Field(None, description="Path of a keys file, typically a mounted Secret.")
    env: Optional[str] = Field(None, description="Name of an environment variable holding the keys document.")


class AuthConfig(StrictModel):
    """API-key authentication (`Authorization: Bearer <key>`)."""

    mode: Literal["api_key", "none"] = Field("api_key", description="api_key requires a key on every API request.")
    api_keys: ApiKeysConfig = Field(default_factory=ApiKeysConfig, description="Where the keys are read from.")


class IngressConfig(StrictModel):
    """The gateway replicas that front all models (used when more than one model is served)."""

    min_replicas: int = Field(1, ge=1, description="Fewest gateway replicas.")
    max_replicas: int = Field(2, ge=1, description="Most gateway replicas.")
    max_ongoing_requests: int = Field(1024, ge=1, description="Requests one gateway replica takes at once.")
    target_ongoing_requests: float = Field(256, gt=0, description="Per-replica load the autoscaler aims for.")

    @model_validator(mode="after")
    def _replica_bounds(self) -> IngressConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("ingress.min_replicas is greater than ingress.max_replicas")
        return self


class GatewayConfig(StrictModel):
    """What the gateway adds in front of Ray Serve LLM: auth, CORS, request limits, topology."""

    auth: AuthConfig = Field(default_factory=AuthConfig, description="API-key authentication.")
    cors_allow_origins: List[str] = Field(
        default_factory=list, description="Origins browsers may call from; none by default."
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    direct_streaming: bool = Field(
        True,
        description=(
            "With exactly one model and Ray started with HAProxy, make the engine replica itself the "
            "ingress (the fastest path); false always routes through the gateway deployment."
        ),
    )
    direct_model: Optional[str] = Field(
        None,
        description=(
            "The model whose engine replica is the ingress (no gateway deployment, so no extra hop for it), "
            "even with several models: the others are reached from that replica over Serve handles. rag and "
            "batch then run in that replica too; without direct_model they keep the gateway deployment. Not "
            "with LoRA models, which need the gateway deployment."
        ),
    )
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="Gateway deployment sizing.")


class RagStoreConfig(StrictModel):
    """The vector store (pymilvus): a Milvus Lite file owned by one replica, or a Milvus server."""

    uri: str = Field(
        ...,
        min_length=1,
        description=(
            "Milvus Lite: an absolute path of a file ending in .db (on a persistent volume to survive "
            "restarts). Milvus server: its URI, e.g. http://milvus.milvus.svc:19530 or https://..."
        ),
    )
    token_env: Optional[str] = Field(
        None, description="Environment variable holding the server's token (user:password or an API key)."
    )
    user_env: Optional[str] = Field(None, description="Environment variable holding the server's user name.")
    password_env: Optional[str] = Field(None, description="Environment variable holding the server's password.")
    db_name: Optional[str] = Field(None, description="Milvus database on the server; empty: the default one.")
    replicas: int = Field(
        1, ge=1, description="Store replicas; a Milvus Lite file allows only 1 (one process may own it)."
    )

    @property
    def is_lite(self) -> bool:
        return "://" not in self.uri

    @model_validator(mode="after")
    def _lite_rules(self) -> RagStoreConfig:
        if self.is_lite:
            if not (self.uri.startswith("/") and self.uri.endswith(".db")):
                raise ValueError(
                    f"rag.store.uri {self.uri!r} is neither a server URI (http://host:19530) nor an "
                    "absolute Milvus Lite file path ending in .db; use e.g. /data/rag/milvus.db"
                )
            if self.replicas != 1:
                raise ValueError("rag.store.replicas must be 1 with a Milvus Lite file; use a Milvus server to scale")
            if self.token_env or self.user_env or self.password_env or self.db_name:
                raise ValueError("credentials and db_name apply to a Milvus server; remove them for a Lite file")
        return self


class RagConfig(StrictModel):
    """Retrieval-augmented generation: /v1/rag/... endpoints and `rag` on chat completions."""

    store: RagStoreConfig = Field(..., description="Where chunks and their embeddings are stored.")
    default_embedding_model: Optional[str] = Field(
        None, description="Embedding model of new collections that name none; default: the only embed model."
    )
    chunk_size: int = Field(800, ge=32, le=8000, description="Default largest chunk, in characters (per collection).")
    chunk_overlap: int = Field(
        100, ge=0, description="Default characters repeated between neighbouring chunks (per collection)."
    )
    max_document_chars: int = Field(
        200_000, ge=1, description="Longest document text accepted; longer ones get 400 and nothing is stored."
    )
    max_documents_per_request: int = Field(64, ge=1, description="Most documents one ingestion request may carry.")
    embed_batch_size: int = Field(32, ge=1, description="Chunks embedded per request to the embedding model.")
    default_top_k: int = Field(4, ge=1, description="Chunks retrieved when a request does not say.")
    max_top_k: int = Field(50, ge=1, description="Most chunks one search or chat may retrieve.")
    max_context_chars: int = Field(
        6000, ge=100, description="Most characters of retrieved text put into a chat prompt (fit the model's context)."
    )
    instructions: str = Field(
        DEFAULT_RAG_INSTRUCTIONS, min_length=1, description="System instructions placed before the numbered sources."
    )

    @model_validator(mode="after")
    def _chunk_rules(self) -> RagConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("rag.chunk_overlap must be smaller than rag.chunk_size")
        if self.default_top_k > self.max_top_k:
            raise ValueError("rag.default_top_k is greater than rag.max_top_k")
        return self


class BatchConfig(StrictModel):
    """The OpenAI Batch API (/v1/files, /v1/batches), run by Ray Data on the app's own engines."""

    store_uri: str = Field(
        ...,
        min_length=1,
        description=(
            "Where files and batch records live (pyarrow.fs): an absolute directory (on a cluster, a volume "
            "every Ray pod mounts) or an object store prefix, e.g. s3://bucket/llm-batch or gs://bucket/llm-batch."
        ),
    )
    max_file_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest input file accepted by POST /v1/files; larger ones get 413."
    )
    max_lines: int = Field(50_000, ge=1, description="Most requests one batch input file may hold.")
    engine_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description=(
            "Share of each engine's max_ongoing_requests that batch rows may hold at once, so online "
            "traffic keeps its latency (0.25: a quarter)."
        ),
    )
    request_timeout_s: float = Field(
        600, gt=0, description="Longest one batch request may take; a slower one fails that line only."
    )
    max_rows_per_s: Optional[float] = Field(
        None,
        gt=0,
        description=(
            "Most batch rows started per second, over all of a batch's models (absent: as fast as engine_share "
            "allows). On a node where batch rows and online requests share the CPUs, holding engine slots is not "
            "enough: a batch at full speed roughly halved online requests/s on two cores whatever engine_share was. "
            "A rate bound trades batch throughput for online latency; benchmarks/batch.py measures both."
        ),
    )
    worker_niceness: int = Field(
        19,
        ge=0,
        le=19,
        description=(
            "Nice value (0-19) of the batch pipeline's threads (Ray Data's workers, the runner's batch thread), "
            "so online requests get the CPU first while a batch runs; the engines and the gateway keep theirs. "
            "Ray itself starts its workers at 15 (RAY_worker_niceness), engines included, so only 16-19 put "
            "batch work below them; lower values leave those threads at 15. An idle machine still gives batch "
            "work every core. 0: no change."
        ),
    )
    completion_window_s: int = Field(
        24 * 3600,
        ge=1,
        le=24 * 3600,
        description=(
            "Seconds after creation a batch expires (its expires_at): lines not run by then go to the error "
            "file with code batch_expired and the batch ends `expired`. The API's completion_window is always "
            "'24h' (OpenAI's only value); a shorter window bounds how long a batch may hold the engines."
        ),
    )

    @field_validator("store_uri")
    @classmethod
    def _store_uri(cls, value: str) -> str:
        if "://" in value:
            if not value.startswith(("s3://", "gs://", "file://")):
                raise ValueError(f"batch.store_uri {value!r}: use an absolute path, s3://bucket/prefix or gs://...")
        elif not value.startswith("/"):
            raise ValueError(f"batch.store_uri {value!r} is a relative path; use an absolute one, e.g. /data/batch")
        return value


class AppConfig(StrictModel):
    """Arguments of `llm_serving.app:build_app` (the RayService serveConfigV2 `args`)."""

    models: Dict[str, ModelConfig] = Field(..., min_length=1, description="Models keyed by their public name.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="Gateway settings.")
    rag: Optional[RagConfig] = Field(None, description="Retrieval-augmented generation; off when absent.")
    batch: Optional[BatchConfig] = Field(None, description="The OpenAI Batch API; off when absent.")

    @model_validator(mode="before")
    @classmethod
    def _traffic_is_not_an_arg(cls, value: Any) -> Any:
        if isinstance(value, dict) and "traffic" in value:
            raise ValueError(
                "traffic is not a build argument: it is the Gateway deployment's user_config, applied in "
                "place (keep it under app.traffic in a values profile; the chart and llm-serving serve "
                "render it there)"
            )
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: Dict[str, ModelConfig]) -> Dict[str, ModelConfig]:
        for name in value:
            if not re.match(MODEL_NAME_PATTERN, name):
                raise ValueError(
                    f"model name {name!r} is not allowed; use letters, digits and . _ / : - "
                    "(starting with a letter or digit, at most 128 characters)"
                )
        return value

    @model_validator(mode="after")
    def _lora_models_have_plain_names(self) -> AppConfig:
        for name, model in self.models.items():
            if model.lora is not None and ":" in name:
                raise ValueError(
                    f"model {name!r} has lora but its name has a ':'; clients name an adapter as "
                    "<model>:<adapter>, so rename the model without ':'"
                )
        return self

    @model_validator(mode="after")
    def _keys_have_a_source(self) -> AppConfig:
        auth = self.gateway.auth
        if auth.mode == "api_key" and not (auth.api_keys.file or auth.api_keys.env):
            raise ValueError(
                "gateway.auth.mode is api_key (the default) but no keys source is set; set "
                "gateway.auth.api_keys.file or gateway.auth.api_keys.env, or set gateway.auth.mode: none"
            )
        return self

    @model_validator(mode="after")
    def _rag_has_an_embedding_model(self) -> AppConfig:
        if self.rag is None:
            return self
        embed = sorted(name for name, model in self.models.items() if model.task == "embed")
        if not embed:
            raise ValueError("rag needs an embedding model; add a model with task: embed under models")
        default = self.rag.default_embedding_model
        if default is not None and default not in embed:
            raise ValueError(
                f"rag.default_embedding_model {default!r} is not a model with task: embed; choose one of: "
                + ", ".join(embed)
            )
        return self

    @model_validator(mode="after")
    def _direct_model_can_be_the_ingress(self) -> AppConfig:
        name = self.gateway.direct_model
        if name is None:
            return self
        if name not in self.models:
            raise ValueError(
                f"gateway.direct_model {name!r} is not one of the models; choose one of: " + ", ".join(self.models)
            )
        if not self.gateway.direct_streaming:
            raise ValueError("gateway.direct_model needs gateway.direct_streaming: true; remove one of them")
        if self.models[name].autoscaling.min_replicas == 0:
            raise ValueError(
                f"gateway.direct_model {name!r} scales to zero, but its replicas are the ingress; give it "
                "autoscaling.min_replicas of at least 1, or choose another model"
            )
        if any(model.lora is not None for model in self.models.values()):
            raise ValueError(
                "gateway.direct_model cannot be used with LoRA models: their adapters are checked and listed "
                "in the gateway deployment; remove gateway.direct_model (or the models' lora)"
            )
        return self


class ConfigError(ValueError):
    """Raised for invalid app args; the message names each bad key and how to fix it."""


def validation_problems(error: ValidationError, root: str) -> List[str]:
    """One line per problem pydantic found: `<root>.<key>: <what is wrong and the fix>`."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in (root, *item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against the documented keys"
        problems.append(f"{location}: {message}")
    return problems


def format_validation_error(error: ValidationError, root: str = "args") -> str:
    problems = validation_problems(error, root)
    return "\n".join([f"invalid llm-serving app config ({len(problems)} problem(s)):"] + [f"  - {p}" for p in problems])


def parse_app_config(args: Dict[str, Any]) -> AppConfig:
    """Validate raw args (from serveConfigV2 or a profile) into an AppConfig or raise ConfigError."""
    try:
        return AppConfig.model_validate(args)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
