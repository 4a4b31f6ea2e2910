"""Per-model features (tool calling, chat template, reasoning, structured output): the parser names the
config accepts are the installed vLLM's, each setting becomes the vLLM engine argument that turns it on,
the tiny model's template renders an agent loop's turns, and the GPU profiles turn tool calling on."""

from pathlib import Path

import pytest
import yaml
from transformers.utils.chat_template_utils import render_jinja_template

from llm_serving.app import to_llm_config
from llm_serving.engine_args import DEFAULT_STRUCTURED_OUTPUTS_CONFIG, STRICT_TOOL_CALLING_OFF
from llm_serving.builtin_models import _CHAT_TEMPLATE as TINY_CHAT_TEMPLATE
from llm_serving.config import REASONING_PARSERS, TOOL_CALL_PARSERS, ConfigError, parse_app_config

VALUES = Path(__file__).resolve().parents[2] / "values"


def args(**model):
    return {"models": {"chat": {"source": "org/model", **model}}, "gateway": {"auth": {"mode": "none"}}}


def llm_config(**model):
    return to_llm_config("chat", parse_app_config(args(**model)).models["chat"])


def engine_kwargs(**model):
    return llm_config(**model).engine_kwargs


def test_the_tool_call_parsers_are_the_installed_vllms():
    from vllm.tool_parsers import ToolParserManager

    installed = tuple(sorted(ToolParserManager.list_registered()))
    assert TOOL_CALL_PARSERS == installed, "update ToolCallParser in llm_serving/config.py to the installed vLLM's"


def test_the_reasoning_parsers_are_the_installed_vllms():
    from vllm.reasoning import ReasoningParserManager

    installed = tuple(sorted(ReasoningParserManager.list_registered()))
    assert REASONING_PARSERS == installed, "update ReasoningParser in llm_serving/config.py to the installed vLLM's"


@pytest.mark.parametrize(
    "model, expected",
    [
        (dict(tool_call_parser="llama3-json"), r"models\.chat\.tool_call_parser: Input should be .*'hermes'.*'llama3_json'"),
        (dict(reasoning_parser="r1"), r"models\.chat\.reasoning_parser: Input should be .*'deepseek_r1'"),
        (dict(chat_template=""), r"models\.chat\.chat_template: String should have at least 1 character"),
        (dict(engine_kwargs={"tool_call_parser": "hermes"}), r"engine_kwargs\.tool_call_parser is set by the app; set tool_call_parser instead"),
        (dict(engine_kwargs={"enable_auto_tool_choice": True}), r"engine_kwargs\.enable_auto_tool_choice is set by the app; set tool_call_parser instead"),
        (dict(engine_kwargs={"chat_template": "x"}), r"engine_kwargs\.chat_template is set by the app; set chat_template instead"),
        (dict(engine_kwargs={"reasoning_parser": "qwen3"}), r"engine_kwargs\.reasoning_parser is set by the app; set reasoning_parser instead"),
        (dict(task="embed", tool_call_parser="hermes"), r"tool_call_parser applies to chat models; remove it or set task: generate"),
        (dict(task="embed", reasoning_parser="qwen3"), r"reasoning_parser applies to chat models; remove it or set task: generate"),
    ],
)
def test_bad_feature_settings_are_refused_naming_the_key_and_the_fix(model, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(args(**model))


def test_tool_calling_is_off_unless_a_parser_is_named():
    kwargs = engine_kwargs()
    assert "enable_auto_tool_choice" not in kwargs and "tool_call_parser" not in kwargs


def test_each_feature_becomes_the_vllm_argument_that_turns_it_on():
    # FrontendArgs fields (vllm/entrypoints/launchers/cli_args.py) and an EngineArgs field.
    kwargs = engine_kwargs(tool_call_parser="hermes", chat_template="{{ messages }}", reasoning_parser="qwen3")
    assert kwargs["enable_auto_tool_choice"] is True
    assert kwargs["tool_call_parser"] == "hermes"
    assert kwargs["chat_template"] == "{{ messages }}"
    assert kwargs["reasoning_parser"] == "qwen3"


def test_structured_output_is_strict_compact_json_unless_engine_kwargs_replace_it():
    default = llm_config()
    assert default.engine_kwargs["structured_outputs_config"] == {"backend": "guidance", "disable_any_whitespace": True}
    # llguidance cannot take vLLM's xgrammar structural tags for tool calls: they are off with it.
    assert default.runtime_env == {"env_vars": {"VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}}
    assert DEFAULT_STRUCTURED_OUTPUTS_CONFIG["backend"] == "guidance"  # not shared by reference
    own = {"backend": "xgrammar"}
    replaced = llm_config(engine_kwargs={"structured_outputs_config": own})
    assert replaced.engine_kwargs["structured_outputs_config"] == own
    assert not (replaced.runtime_env or {}).get("env_vars")


def test_the_variable_that_turns_structural_tags_off_is_the_one_vllm_reads():
    import vllm.envs

    (name,) = STRICT_TOOL_CALLING_OFF
    assert name in vllm.envs.environment_variables


def test_the_default_structured_output_config_is_one_vllm_accepts():
    from vllm.config.structured_outputs import StructuredOutputsConfig

    StructuredOutputsConfig(**DEFAULT_STRUCTURED_OUTPUTS_CONFIG)  # raises on a combination vLLM refuses


def test_embedding_models_get_no_generation_settings_but_may_take_a_chat_template():
    embed = llm_config(task="embed", chat_template="{{ messages }}")
    assert embed.engine_kwargs["chat_template"] == "{{ messages }}"
    assert "structured_outputs_config" not in embed.engine_kwargs
    assert not (embed.runtime_env or {}).get("env_vars")


def test_the_tiny_models_template_renders_an_agent_loops_turns():
    weather = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": weather}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "12C and sunny", "tool_call_id": "call_1"},
    ]
    # transformers' own renderer (trim_blocks, its tojson), as vLLM renders HF templates.
    prompt, _ = render_jinja_template([conversation], tools=tools, chat_template=TINY_CHAT_TEMPLATE,
                                      add_generation_prompt=True)
    (prompt,) = prompt
    assert prompt == (
        "<|system|>\nBe brief.\n"
        'To call a tool, answer <tool_call>{"name": <name>, "arguments": <arguments>}</tool_call>.\n'
        "<tools>\nget_weather(city, days)\nget_time()\n</tools></s>\n"
        "<|user|>\nWeather in Oslo?</s>\n"
        '<|assistant|>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call></s>\n'
        "<|tool|>\n<tool_response>12C and sunny</tool_response></s>\n"
        "<|assistant|>\n"
    )


def test_the_tiny_models_template_without_tools_is_the_plain_chat_one():
    (prompt,), _ = render_jinja_template([[{"role": "user", "content": "hi"}]], chat_template=TINY_CHAT_TEMPLATE,
                                         add_generation_prompt=True)
    assert prompt == "<|user|>\nhi</s>\n<|assistant|>\n"


# The tool-call format of each model family the GPU profiles serve.
PARSER_BY_SOURCE_PREFIX = {
    "meta-llama/Llama-3.1-": "llama3_json",
    "meta-llama/Llama-3.3-": "llama3_json",
    "Qwen/Qwen2.5-": "hermes",
    "builtin://tiny-chat": "hermes",
}


def profile_chat_models():
    """The chat models of the serving profiles (`app:`; the batch profiles' `job:` runs no tools)."""
    for path in sorted(VALUES.glob("*.yaml")):
        profile = yaml.safe_load(path.read_text())
        for name, model in profile.get("app", {}).get("models", {}).items():
            if model.get("task", "generate") == "generate":
                yield pytest.param(model, id=f"{path.stem}:{name}")


@pytest.mark.parametrize("model", list(profile_chat_models()))
def test_every_profiles_chat_model_has_tool_calling_on_with_its_familys_parser(model):
    (parser,) = [p for prefix, p in PARSER_BY_SOURCE_PREFIX.items() if model["source"].startswith(prefix)]
    assert model.get("tool_call_parser") == parser
