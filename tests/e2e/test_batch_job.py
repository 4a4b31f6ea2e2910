"""The offline batch job end to end: values/batch-offline-cpu.yaml rendered by the real chart
(charts/llm-batch), the job config from its ConfigMap run by `llm-serving batch` as the RayJob's
entrypoint runs it (here on a local Ray of its own, with the CPU build of vLLM and the tiny model),
and the output checked line by line against the input.

One run of the command for the whole module (a Ray cluster and one vLLM engine: about a minute on
an idle machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from llm_serving.builtin_models import resolve_model_source
from tests.charts.render import VALUES, render_chart
from tests.e2e.servers import REPO

PROFILE = VALUES / "batch-offline-cpu.yaml"
QUESTIONS = [
    "What does Ray Serve run?",
    "Who schedules the pods onto GPU nodes?",
    "How does the gateway route a request?",
    "What does retrieval find?",
    "Tell me about the quick brown fox.",
]
ROWS = 20
RUN_TIMEOUT_S = 900


def requests() -> List[Dict[str, Any]]:
    """20 chat rows; rows i and i + 5 ask the same question (in different batches of 8)."""
    return [
        {"id": f"row-{i:02d}", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        for i in range(ROWS)
    ]


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("batch-data")
    (data / "batch").mkdir()
    with open(data / "batch" / "requests.jsonl", "w") as out:
        for row in requests():
            out.write(json.dumps(row) + "\n")
    # The profile with its volume mounted at our folder: input and output keep their place under it.
    profile = yaml.safe_load(PROFILE.read_text())
    moved = {
        "storage": {"pvc": {"mountPath": str(data)}},
        "job": {
            "input": {"uri": str(data / profile["job"]["input"]["uri"].removeprefix("/data/"))},
            "output": {"uri": str(data / profile["job"]["output"]["uri"].removeprefix("/data/"))},
        },
    }
    objects = render_chart("llm-batch", values_files=[PROFILE], values=moved)
    (config_map,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    job_file = data / "job.yaml"
    job_file.write_text(config_map["data"]["job.yaml"])

    env = {**os.environ, "PYTHONPATH": str(REPO / "image" / "src")}
    env.pop("RAY_ADDRESS", None)  # a Ray cluster of its own, as on a laptop
    result = subprocess.run(
        [sys.executable, "-m", "llm_serving", "batch", str(job_file)],
        cwd=data, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    config = yaml.safe_load(job_file.read_text())
    output_dir = Path(config["output"]["uri"])
    lines = [
        json.loads(line) for path in sorted(output_dir.glob("*.json*")) for line in path.read_text().splitlines() if line
    ]
    return config, lines, result


def test_the_chart_rendered_the_profiles_job_with_only_the_paths_moved(job_run):
    config, _, _ = job_run
    expected = yaml.safe_load(PROFILE.read_text())["job"]
    assert {k: v for k, v in config.items() if k not in ("input", "output")} == {
        k: v for k, v in expected.items() if k not in ("input", "output")
    }
    assert config["input"]["format"] == "jsonl" and config["output"]["format"] == "jsonl"


def test_one_output_line_per_input_id(job_run):
    _, lines, _ = job_run
    ids = [line["id"] for line in lines]
    assert sorted(ids) == sorted(row["id"] for row in requests())
    assert all(set(line) == {"id", "generated_text", "num_input_tokens", "num_generated_tokens"} for line in lines)


def test_each_line_has_text_and_token_counts_the_model_agrees_with(job_run):
    config, lines, _ = job_run
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(config["model"]["source"]))
    by_id = {row["id"]: row for row in requests()}
    max_tokens = config["sampling"]["max_tokens"]
    for line in lines:
        assert line["generated_text"], line
        assert 1 <= line["num_generated_tokens"] <= max_tokens, line
        # The prompt vLLM saw is the model's chat template applied to the row's messages.
        prompt = tokenizer.apply_chat_template(by_id[line["id"]]["messages"], add_generation_prompt=True, tokenize=False)
        assert line["num_input_tokens"] == len(tokenizer(prompt)["input_ids"]), line["id"]


def test_temperature_zero_gives_the_same_answer_to_the_same_question(job_run):
    _, lines, _ = job_run
    by_id = {line["id"]: line for line in lines}
    for i in range(ROWS - len(QUESTIONS)):
        first, again = by_id[f"row-{i:02d}"], by_id[f"row-{i + len(QUESTIONS):02d}"]
        assert first["generated_text"] == again["generated_text"]
        assert first["num_generated_tokens"] == again["num_generated_tokens"]


def test_the_command_says_where_the_results_went(job_run):
    config, _, result = job_run
    assert f"llm-serving batch: wrote the results to {config['output']['uri']}" in result.stdout + result.stderr
