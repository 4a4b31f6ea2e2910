"""Tool calling and structured output through the gateway, with the official openai client, on the
shared dev-cpu instance (values/dev-cpu.yaml: tiny-chat with the hermes tool-call parser).

The tiny model's weights are random, so its text is gibberish; guided decoding is what makes its tool
arguments and JSON content valid, and that is what these tests check: every argument string and JSON
answer must validate against the schema the request gave (jsonschema), streamed and not. Strings in
the schemas are length-bounded and temperature is 0, so each answer is short and deterministic.
"""

from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest

from tests.e2e.dev_cpu import CHAT_MODEL
from tests.e2e.servers import scrape, total

pytestmark = pytest.mark.e2e

MAX_TOKENS = 48
# "required" decodes an array of {name, parameters} objects, one call's worth of JSON more than a
# named call: about 50 tokens for get_weather with the tiny model.
REQUIRED_MAX_TOKENS = 96
SCRAPE_DEADLINE_S = 90  # Ray's metrics agent exports on an interval

WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME_ARGS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"{name} of a place", "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 16},
        "confident": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["answer", "confident", "score"],
    "additionalProperties": False,
}

# Completion tokens of every request this module makes, to find them again in the metrics.
completion_tokens_seen: list[int] = []


@pytest.fixture(scope="module")
def before(gateway):
    return scrape(gateway)


@pytest.fixture
def chat(client, before):
    def create(**request):
        request = {"model": CHAT_MODEL, "messages": ASK, "max_tokens": MAX_TOKENS, "temperature": 0, **request}
        if request.get("stream"):
            # Usage on the last chunk, to count this module's tokens.
            request["stream_options"] = {"include_usage": True}
            chunks = list(client.chat.completions.create(**request))
            completion_tokens_seen.append(chunks[-1].usage.completion_tokens)
            return chunks
        response = client.chat.completions.create(**request)
        completion_tokens_seen.append(response.usage.completion_tokens)
        return response

    return create


def named(name):
    return {"type": "function", "function": {"name": name}}


def streamed_tool_calls(chunks):
    """The tool calls a stream's deltas add up to, and how many argument fragments each came in."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
                call["id"] = call["id"] or delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
                    call["fragments"] += 1
    return [calls[index] for index in sorted(calls)]


def test_a_named_tool_choice_returns_that_call_with_arguments_valid_for_its_schema(chat):
    response = chat(tools=TOOLS, tool_choice=named("get_weather"))
    (call,) = response.choices[0].message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_ARGS)


def test_a_named_tool_choice_streams_the_arguments_in_deltas(chat):
    # vLLM merges the outputs a starved reader has not taken yet into one event (a loaded machine),
    # so the arguments must come in several deltas in one of three streams; a buffering server
    # fails all three.
    fragments = []
    for _ in range(3):
        (call,) = streamed_tool_calls(chat(tools=TOOLS, tool_choice=named("get_weather"), stream=True))
        assert call["id"] and call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER_ARGS)
        fragments.append(call["fragments"])
        if call["fragments"] > 1:
            break
    assert max(fragments) > 1, f"the arguments came in one piece in each stream ({fragments} fragments)"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_required_tool_choice_calls_one_of_the_tools_with_valid_arguments(chat, stream):
    response = chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, stream=stream,
                    max_tokens=REQUIRED_MAX_TOKENS)
    if stream:
        calls = [(call["name"], call["arguments"]) for call in streamed_tool_calls(response)]
        assert response[-2].choices[0].finish_reason == "tool_calls"  # the last chunk carries only usage
    else:
        calls = [(call.function.name, call.function.arguments) for call in response.choices[0].message.tool_calls]
        assert response.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1  # parallel_tool_calls=False
    ((name, arguments),) = calls
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_tool_choice_none_answers_in_text_and_auto_is_accepted(chat):
    none = chat(tools=TOOLS, tool_choice="none").choices[0]
    assert not none.message.tool_calls and isinstance(none.message.content, str)
    auto = chat(tools=TOOLS, tool_choice="auto").choices[0]  # the model may or may not call a tool
    for call in auto.message.tool_calls or []:
        assert call.function.name in SCHEMAS


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_response_format_content_validates_against_the_schema(chat, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    response = chat(response_format=response_format, stream=stream)
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in response if c.choices)
    else:
        content = response.choices[0].message.content
    jsonschema.validate(json.loads(content), ANSWER)  # json.loads also refuses raw control characters


def test_json_object_response_format_content_is_a_json_object(chat):
    # (This prompt makes the tiny model close its object early at temperature 0; on another it keeps
    # adding digits to a number until max_tokens, which no grammar can forbid.)
    response = chat(messages=[{"role": "user", "content": "Answer in JSON."}], response_format={"type": "json_object"})
    response = response.choices[0]
    assert response.finish_reason == "stop"
    assert isinstance(json.loads(response.message.content), dict)


def test_vllms_guided_choice_and_regex_extras_pass_through(chat):
    choice = chat(extra_body={"structured_outputs": {"choice": ["sunny", "rainy", "snowy"]}}).choices[0]
    assert choice.message.content in ("sunny", "rainy", "snowy")
    regex = chat(extra_body={"structured_outputs": {"regex": r"[0-9]{2}C"}}).choices[0]
    assert re.fullmatch(r"[0-9]{2}C", regex.message.content)


# The tools the agent loop runs; short results, as the tiny model's window is 512 tokens.
def get_weather(city: str, days: int) -> str:
    return f"{days} days of 12C in {city}"


def get_time(zone: str) -> str:
    return f"12:00 {zone}"


RUN = {"get_weather": get_weather, "get_time": get_time}


def run_tool_calls(messages, calls):
    """What an agent does with the model's tool calls: run each, send its result back as a `tool` message."""
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    for call in calls:
        result = RUN[call["function"]["name"]](**json.loads(call["function"]["arguments"]))
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


def test_an_agent_loop_runs_the_tool_the_model_calls_and_gets_an_answer(chat):
    messages = list(ASK)
    # The model must call a tool; the loop runs it and sends the result back.
    turn = chat(messages=messages, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                max_tokens=REQUIRED_MAX_TOKENS).choices[0].message
    (call,) = turn.tool_calls
    run_tool_calls(messages, [call.model_dump(include={"id", "type", "function"})])
    # The model answers from the tool's result, in text.
    final = chat(messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8).choices[0]
    assert not final.message.tool_calls
    assert final.message.content and final.finish_reason in ("stop", "length")


def test_results_of_parallel_calls_go_back_together_and_the_model_answers(chat):
    # Two calls in one assistant turn, as a capable model makes them (a random one seldom does).
    messages = list(ASK)
    run_tool_calls(messages, [
        {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}},
        {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}},
    ])
    final = chat(messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=8).choices[0]
    assert final.finish_reason in ("stop", "length", "tool_calls")
    assert final.message.content or final.message.tool_calls


def test_an_agent_branches_on_structured_output(chat):
    route = {
        "type": "object",
        "properties": {"next": {"type": "string", "enum": ["use_tool", "answer"]}},
        "required": ["next"],
        "additionalProperties": False,
    }
    decision = json.loads(
        chat(response_format={"type": "json_schema", "json_schema": {"name": "route", "schema": route, "strict": True}})
        .choices[0].message.content
    )
    jsonschema.validate(decision, route)
    # Each branch makes a different kind of call, and each is checked for what it must return.
    if decision["next"] == "use_tool":
        (call,) = chat(tools=TOOLS, tool_choice=named("get_time")).choices[0].message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), TIME_ARGS)
    else:
        reply = chat(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}})
        jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)


def test_the_tokens_of_these_requests_are_counted_for_the_key(gateway, before):
    # Runs last in this module: every request above has recorded its completion tokens.
    expected = sum(completion_tokens_seen)
    assert expected > 0
    labels = dict(model=CHAT_MODEL, api_key="full-access")
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        after = scrape(gateway)
        grown = total(after, "ray_llm_serving_generated_tokens_total", **labels) - total(
            before, "ray_llm_serving_generated_tokens_total", **labels
        )
        if grown >= expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert grown >= expected, f"generated tokens grew by {grown}, the responses' usage says {expected}"
