"""The batch job's config and its translation to Ray Data LLM (llm_serving.batch_job)."""

from __future__ import annotations

import pytest
import yaml

from llm_serving.batch_job import (
    BatchJobConfig,
    build_request,
    build_result,
    engine_settings,
    load_batch_job_config,
    parse_batch_job_config,
)
from llm_serving.config import ConfigError
from llm_serving.config_files import ConfigFileError
from llm_serving.engine_args import engine_kwargs

JOB = {
    "model": {"source": "builtin://tiny-chat", "device": "cpu", "max_model_len": 512},
    "input": {"uri": "/data/in.jsonl"},
    "output": {"uri": "/data/out"},
}


def job(**changes) -> BatchJobConfig:
    return parse_batch_job_config({**JOB, **changes})


class TestConfig:
    def test_defaults(self):
        config = job()
        assert config.input.format == "jsonl" and config.input.messages_column == "messages"
        assert config.sampling.temperature == 0 and config.engine_replicas == 1

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"inputs": {}}, "job.inputs: unknown key; check the spelling"),
            ({"input": {"uri": "x", "prompt_column": "text"}}, "set exactly one of input.messages_column"),
            ({"input": {"uri": "x", "messages_column": None}}, "set exactly one of input.messages_column"),
            ({"model": {"source": "m", "task": "embed"}}, "model.task must be generate"),
            ({"model": {"source": "m", "engine_kwargs": {"max_model_len": 9}}}, "engine_kwargs.max_model_len is set by the app"),
            ({"engine_replicas": 0}, "job.engine_replicas: Input should be greater than or equal to 1"),
            (
                {"model": {"source": "m", "lora": {"source": "s3://bucket/adapters"}}},
                "model.lora applies to the serving app (charts/llm-serving), not to a batch job; remove it",
            ),
            (
                {"model": {"source": "m", "request_router": {"policy": "prefix_cache_affinity"}}},
                "model.request_router applies to the serving app",
            ),
            ({"model": {"source": "m", "tool_call_parser": "hermes"}}, "model.tool_call_parser applies to the serving app"),
        ],
    )
    def test_refusals_name_the_key_and_the_fix(self, changes, message):
        with pytest.raises(ConfigError, match="invalid batch job config") as error:
            job(**changes)
        assert message in str(error.value)

    def test_loads_a_values_profile_or_the_bare_job_config(self, tmp_path):
        profile, bare = tmp_path / "profile.yaml", tmp_path / "job.yaml"
        profile.write_text(yaml.safe_dump({"job": JOB, "workerGroups": {}}))
        bare.write_text(yaml.safe_dump(JOB))
        assert load_batch_job_config(profile) == load_batch_job_config(bare) == job()

    def test_a_serving_profile_is_refused(self, tmp_path):
        serving = tmp_path / "dev.yaml"
        serving.write_text("app: {models: {}}\n")
        with pytest.raises(ConfigFileError, match="neither `job:`"):
            load_batch_job_config(serving)


class TestEngineSettings:
    def test_cpu_engine_asks_for_a_cpu_bundle_only(self):
        settings = engine_settings(job().model)
        assert settings["placement_group_config"] == {"bundles": [{"CPU": 1}]}
        assert settings["engine_kwargs"] == engine_kwargs(job().model)  # the serving app's, one source
        assert settings["engine_kwargs"]["tensor_parallel_size"] == 1
        assert settings["engine_kwargs"]["max_model_len"] == 512

    def test_a_chat_template_reaches_the_engine_as_in_serving(self):
        model = {"source": "m", "device": "cpu", "chat_template": "{{ messages[0].content }}"}
        assert engine_settings(job(model=model).model)["engine_kwargs"]["chat_template"] == "{{ messages[0].content }}"

    def test_gpu_engine_one_bundle_per_rank_tied_to_its_group(self):
        model = {"source": "m", "tensor_parallel_size": 2, "worker_group": "l40s", "accelerator_type": "L40S"}
        settings = engine_settings(job(model=model).model)
        bundle = {"CPU": 1, "GPU": 1, "llm-serving-group:l40s": 0.001}
        assert settings["placement_group_config"] == {"bundles": [bundle, bundle], "strategy": "STRICT_PACK"}
        assert settings["accelerator_type"] == "L40S"


class TestRows:
    def test_chat_rows(self):
        config = job(sampling={"max_tokens": 8})
        request = build_request(config)({"id": 3, "messages": [{"role": "user", "content": "hi"}], "other": 1})
        assert request == {
            "id": 3,
            "messages": [{"role": "user", "content": "hi"}],
            "sampling_params": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8},
        }

    def test_prompt_rows_and_results(self):
        config = job(input={"uri": "x", "id_column": "key", "messages_column": None, "prompt_column": "text"})
        assert build_request(config)({"key": "a", "text": "hello"})["prompt"] == "hello"
        engine_row = {"key": "a", "generated_text": "t", "num_input_tokens": 2, "num_generated_tokens": 1, "prompt": "hello"}
        assert build_result(config)(engine_row) == {"key": "a", "generated_text": "t", "num_input_tokens": 2, "num_generated_tokens": 1}


def test_a_local_run_can_read_and_write_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    moved = job().with_locations("requests.jsonl", "s3://bucket/out/")
    assert moved.input.uri == str(tmp_path / "requests.jsonl") and moved.output.uri == "s3://bucket/out/"
    assert job().input.uri == "/data/in.jsonl"  # the original is unchanged
