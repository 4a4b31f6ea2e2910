"""The vLLM engine arguments and GPU bundles of one model, derived from its config.

One place for the serving app (app.to_llm_config, Ray Serve LLM's LLMConfig) and the offline batch
job (batch_job.engine_settings, Ray Data LLM's vLLMEngineProcessorConfig), so a model runs on the
same engine settings in both. Imports nothing of Ray or vLLM (the CLI and the schema generator
import it before Ray is set up).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from llm_serving.config import WORKER_GROUP_RESOURCE_PREFIX, ModelConfig

# What one bundle asks of its worker group's resource (a node has 1): Ray Serve LLM's own share for
# the accelerator-type resource, so up to 1000 bundles fit on one node and only GPUs limit them.
WORKER_GROUP_BUNDLE_SHARE = 0.001


# Structured output (response_format json_object / json_schema, named and required tool_choice) as
# the app sets it unless engine_kwargs.structured_outputs_config replaces it. vLLM 0.32's "auto" picks
# xgrammar 0.2.8, which (1) lets a string with maxLength/minLength hold raw control characters (its
# length-bounded string rule is [^"\\\r\n], not JSON's, which also excludes \x00-\x1f), so json.loads
# rejects the content, and (2) allows any run of whitespace between tokens, so a weak model spends
# max_tokens on it. llguidance keeps to JSON's string grammar, and disable_any_whitespace makes the
# output compact (vllm/config/structured_outputs.py allows it only with xgrammar or guidance).
DEFAULT_STRUCTURED_OUTPUTS_CONFIG = {"backend": "guidance", "disable_any_whitespace": True}
# vLLM 0.32 constrains tool calls with xgrammar structural tags when a parser has one (hermes,
# llama3_json: vllm/tool_parsers/abstract_tool_parser.py, structural_tag_model), which llguidance
# refuses ("Invalid grammar specification: 'triggers'"). With this variable at 0 a named or required
# tool_choice is guided by the tools' JSON schemas instead (vLLM's path before structural tags), which
# any backend takes; set only while the guidance default above is in effect.
STRICT_TOOL_CALLING_OFF = {"VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}


def model_feature_engine_kwargs(model: ModelConfig) -> Dict[str, Any]:
    """Tool calling, chat template, reasoning and structured output as vLLM engine arguments. Ray
    Serve LLM hands the keys that are vLLM FrontendArgs fields (tool calling, chat template) to the
    OpenAI frontend and the rest to the engine (ray/llm/_internal/serve/engines/vllm/vllm_models.py)."""
    kwargs: Dict[str, Any] = {}
    if model.chat_template is not None:
        kwargs["chat_template"] = model.chat_template
    if model.task != "generate":
        return kwargs
    if model.tool_call_parser is not None:
        kwargs["enable_auto_tool_choice"] = True
        kwargs["tool_call_parser"] = model.tool_call_parser
    if model.reasoning_parser is not None:
        kwargs["reasoning_parser"] = model.reasoning_parser
    if "structured_outputs_config" not in model.engine_kwargs:
        kwargs["structured_outputs_config"] = dict(DEFAULT_STRUCTURED_OUTPUTS_CONFIG)
    return kwargs


def model_feature_runtime_env(model: ModelConfig) -> Optional[Dict[str, Any]]:
    """The engine replica's environment that the structured-output default needs (see above)."""
    if model.task == "generate" and "structured_outputs_config" not in model.engine_kwargs:
        return {"env_vars": dict(STRICT_TOOL_CALLING_OFF)}
    return None


def engine_kwargs(model: ModelConfig) -> Dict[str, Any]:
    """The model's vLLM engine arguments: its engine_kwargs plus what the app derives from its
    first-class fields (config.ENGINE_KWARGS_OWNED_BY_APP)."""
    kwargs = dict(model.engine_kwargs)
    kwargs["tensor_parallel_size"] = model.tensor_parallel_size
    if model.max_model_len is not None:
        kwargs["max_model_len"] = model.max_model_len
    if model.revision is not None:
        kwargs["revision"] = model.revision
    if model.task == "embed":
        kwargs["runner"] = "pooling"
    kwargs.update(model_feature_engine_kwargs(model))
    if model.lora is not None:
        kwargs.update(
            enable_lora=True,
            max_lora_rank=model.lora.max_rank,
            max_loras=model.lora.max_adapters_per_replica,  # every adapter a replica holds can run in one batch
        )
    return kwargs


def gpu_bundle(model: ModelConfig) -> Dict[str, float]:
    """The placement-group bundle of one tensor-parallel rank of a GPU model.

    It ties the engine to its worker group: each GPU group advertises 1 of its own custom resource
    per node (the group's `resources` field, charts/llm-serving templates/rayservice.yaml and
    charts/llm-batch templates/rayjob.yaml), and every bundle asks a sliver of it, as Ray Serve LLM
    itself does for the accelerator type (ray/llm/_internal/serve/core/configs/accelerators.py,
    GPUAccelerator.default_bundles: 0.001 of `accelerator_type:<type>`). A custom resource rather
    than node labels and a bundle_label_selector: Serve LLM 2.60's PlacementGroupConfig
    (ray/llm/_internal/common/placement.py) forbids extra keys and create_placement_group passes only
    bundles and strategy, and a group's `resources` field is what the autoscaler reads to start a
    group from zero (ray/autoscaler/_private/kuberay/autoscaling_config.py, _get_custom_resources)."""
    bundle: Dict[str, float] = {"GPU": 1}
    if model.worker_group is not None:
        bundle[WORKER_GROUP_RESOURCE_PREFIX + model.worker_group] = WORKER_GROUP_BUNDLE_SHARE
    return bundle
