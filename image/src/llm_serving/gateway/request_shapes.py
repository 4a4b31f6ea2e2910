"""Request-shape validation: the gateway refuses a chat, completion or embedding body of the wrong
shape with one OpenAI-shaped 400 whose `param` is the field's path (`messages[0].content`), before
any engine sees it.

The types come from vLLM's own request models (the ones its server and Ray Serve LLM validate with),
so the gateway refuses what the engine would and accepts what it accepts. Two things those models
do not do by themselves, and which let a bad body reach the engine and end in a 500:

- Pydantic validates `Iterable[...]` fields (a message's `content` parts, an assistant's
  `tool_calls`) lazily, and a JSON object is iterable (over its keys): `"content": {"nested": true}`
  passes validation and fails only when the engine renders the prompt. The message checks below
  refuse it by shape, and every lazily validated field is consumed here, so its errors come now.
- A message is a union of eight shapes, so pydantic's errors for one bad message name every shape
  it did not match; the checks below name the one field that is wrong instead.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.pooling.embed.protocol import EmbeddingChatRequest, EmbeddingCompletionRequest
from vllm.exceptions import VLLMValidationError

from llm_serving.gateway.errors import GatewayError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"

Loc = Tuple[Union[int, str], ...]

# The roles of OpenAI's message types; vLLM also takes any other role, with looser content parts.
OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

# Pydantic error types that mean "wrong JSON type" (code invalid_type); any other is a wrong value.
_TYPE_ERRORS = {"int_from_float", "model_type", "model_attributes_type", "dataclass_type", "is_instance_of"}
_LONGEST_VALUE_SHOWN = 60
_MODEL_CLASS_NAME = re.compile(r" or instance of \w+")
_TOOL_CALL_EXAMPLE = (
    'an object such as {"id": "...", "type": "function", "function": {"name": "...", "arguments": "{}"}}'
)


def check_request_shape(path: str, payload: Dict[str, Any]) -> None:
    """Raise a 400 GatewayError naming the first field of `payload` whose shape or type the endpoint
    at `path` would refuse; bodies for other paths are the engine's business."""
    model = _request_model(path, payload)
    if model is None:
        return
    messages = payload.get("messages")
    if isinstance(messages, list):
        _check_messages(messages)
    # vLLM's "before" validators normalise the dict they get in place; the gateway may forward
    # `payload` re-serialised (an alias), so they get copies of what they touch.
    data = {**payload}
    if isinstance(messages, list):
        data["messages"] = [dict(message) if isinstance(message, dict) else message for message in messages]
    try:
        request = model.model_validate(data)
        _consume_lazy_fields(request, payload)
    except ValidationError as error:
        raise _shape_error(error.errors(include_url=False), payload, ()) from None
    except VLLMValidationError as error:  # vLLM's own cross-field checks, raised as they are
        message, param = str(error.args[0]), error.parameter
        if param and f"`{param}`" not in message:
            message = f"`{param}`: {message}"
        raise GatewayError(400, message, code="invalid_value", param=param) from None
    except ValueError as error:
        raise GatewayError(400, str(error), code="invalid_value") from None


def _request_model(path: str, payload: Dict[str, Any]) -> Optional[Type[BaseModel]]:
    if path == CHAT_PATH:
        return ChatCompletionRequest
    if path == COMPLETIONS_PATH:
        return CompletionRequest
    if path == EMBEDDINGS_PATH:  # vLLM's embeddings take either `input` or chat `messages`
        return EmbeddingChatRequest if "messages" in payload else EmbeddingCompletionRequest
    return None


def _check_messages(messages: List[Any]) -> None:
    """The shape of each chat message: an object with a string `role`; `content` a string, null, or
    an array of parts (objects with a string `type`; in messages of OpenAI's roles vLLM validates
    them as OpenAI's typed parts, so a plain string there fails in the engine); `tool_calls` an
    array of OpenAI tool calls; `name` and `tool_call_id` strings. The parts' own fields are left
    to vLLM's models."""
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object with `role` and `content`", message)
        role = message.get("role")
        if not isinstance(role, str):
            if "role" not in message:
                raise GatewayError(
                    400,
                    f"`{where}.role` is required: one of `system`, `user`, `assistant` or `tool`.",
                    code="missing_required_parameter",
                    param=f"{where}.role",
                )
            raise _wrong_type(f"{where}.role", "a string such as `user`, `assistant`, `system` or `tool`", role)
        content = message.get("content")
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                part_where = f"{where}.content[{part_index}]"
                if isinstance(part, str) and role not in OPENAI_ROLES:
                    continue  # vLLM takes plain-string parts only in messages of its own (custom) roles
                if not isinstance(part, dict):
                    raise _wrong_type(part_where, 'an object such as {"type": "text", "text": "..."}', part)
                if not isinstance(part.get("type"), str):
                    raise _wrong_type(f"{part_where}.type", 'a string such as "text" or "image_url"', part.get("type"))
        elif content is not None and not isinstance(content, str):
            raise _wrong_type(
                f"{where}.content",
                'a string or an array of content parts such as {"type": "text", "text": "..."}',
                content,
            )
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise _wrong_type(f"{where}.tool_calls", "an array of tool calls", tool_calls)
            for call_index, call in enumerate(tool_calls):
                _check_tool_call(f"{where}.tool_calls[{call_index}]", call)
        for field in ("name", "tool_call_id"):
            if message.get(field) is not None and not isinstance(message[field], str):
                raise _wrong_type(f"{where}.{field}", "a string", message[field])


def _check_tool_call(where: str, call: Any) -> None:
    """One of an assistant message's `tool_calls`, as OpenAI defines it (vLLM validates them only
    after the request model is built, where its errors lose their place in the body)."""
    if not isinstance(call, dict):
        raise _wrong_type(where, _TOOL_CALL_EXAMPLE, call)
    function = call.get("function")
    if not isinstance(function, dict):
        raise _wrong_type(f"{where}.function", 'an object such as {"name": "...", "arguments": "{}"}', function)
    for field, value, expected in (
        ("id", call.get("id"), "a string"),
        ("type", call.get("type"), 'a string ("function")'),
        ("function.name", function.get("name"), "a string"),
        ("function.arguments", function.get("arguments"), "a string holding the arguments as JSON"),
    ):
        if not isinstance(value, str):
            raise _wrong_type(f"{where}.{field}", expected, value)


def _consume_lazy_fields(request: BaseModel, payload: Dict[str, Any]) -> None:
    """Validate now what pydantic left as lazy iterators (content parts, tool calls), with errors
    located in the request."""
    for loc, iterator in _lazy_fields(request, ()):
        try:
            for _ in iterator:
                pass
        except ValidationError as error:
            raise _shape_error(error.errors(include_url=False), payload, loc) from None


def _lazy_fields(value: Any, loc: Loc) -> Iterator[Tuple[Loc, Any]]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _lazy_fields(getattr(value, name), (*loc, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _lazy_fields(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _lazy_fields(item, (*loc, index))
    elif type(value).__name__ == "ValidatorIterator":  # pydantic-core's lazy Iterable[...]
        yield loc, value


def _shape_error(errors: Sequence[ErrorDetails], payload: Dict[str, Any], prefix: Loc) -> GatewayError:
    """One 400 from pydantic's errors. Where a field may take several shapes (a union), pydantic
    reports each shape it tried; the report keeps the shapes that match the body's own tags (a
    `type` or `role` literal) and, among those, the closest one."""
    located = [(_real_path(payload, (*prefix, *error["loc"]), error["type"] == "missing"), error) for error in errors]
    candidates = _closest_alternative(located)
    path = candidates[0][0]
    at_path = [error for where, error in candidates if where == path]
    expected = _unique(error["msg"] for error in at_path)
    param = _param(path) or None
    value = _value_at(payload, path)
    code = "missing_required_parameter" if at_path[0]["type"] == "missing" else _code(at_path)
    if at_path[0]["type"] == "missing":
        message = f"`{param}` is required." if param else "A required field is missing."
    else:
        subject = f"`{param}`" if param else "The request body"
        message = f"{subject} is invalid ({' or '.join(expected)}); got {_describe(value)}."
    return GatewayError(400, message, code=code, param=param)


def _real_path(payload: Any, loc: Loc, missing: bool) -> Loc:
    """The steps of a pydantic error location that exist in the body: union members' names
    (`ChatCompletionUserMessageParam`, `str`, `list[str]`) are dropped; a missing field's name is
    kept."""
    path: List[Union[int, str]] = []
    value = payload
    for step in loc:
        if isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            path.append(step)
            value = value[step]
        elif isinstance(value, dict) and isinstance(step, str) and (step in value or (missing and step == loc[-1])):
            path.append(step)
            value = value.get(step)
        # else: a union member's name, not a step into the body
    return tuple(path)


def _closest_alternative(located: List[Tuple[Loc, ErrorDetails]]) -> List[Tuple[Loc, ErrorDetails]]:
    """The errors of the union member the body most plausibly meant: members whose literal tag
    (`"type": "text"`, `"role": "tool"`) the body does not carry are set aside, then the member
    with the fewest errors wins. Errors that all concern one field are kept together (its
    alternatives: "a string or an array")."""
    if len({where for where, _ in located}) <= 1:
        return located
    by_member: Dict[Loc, List[Tuple[Loc, ErrorDetails]]] = {}
    for where, error in located:
        by_member.setdefault(_member(error["loc"]), []).append((where, error))
    plausible = [errors for errors in by_member.values() if not any(e["type"] == "literal_error" for _, e in errors)]
    members = plausible or list(by_member.values())

    # Fewest errors, then the one that got furthest into the body; equals are reported together
    # ("a valid integer or a valid string"), in pydantic's order.
    def closeness(errors: List[Tuple[Loc, ErrorDetails]]) -> Tuple[int, int]:
        return len(errors), -max(len(where) for where, _ in errors)

    best = min(closeness(errors) for errors in members)
    return [located for errors in members if closeness(errors) == best for located in errors]


def _member(loc: Loc) -> Loc:
    """The error's union member: its location up to the first step that names a type."""
    for index, step in enumerate(loc):
        if isinstance(step, str) and (step[:1].isupper() or "[" in step):
            return tuple(loc[: index + 1])
    return tuple(loc)


def _param(path: Loc) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _value_at(payload: Any, path: Loc) -> Any:
    value = payload
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _code(errors: Sequence[ErrorDetails]) -> str:
    kind = errors[0]["type"]
    return "invalid_type" if kind.endswith(("_type", "_parsing")) or kind in _TYPE_ERRORS else "invalid_value"


def _unique(messages: Iterator[str]) -> List[str]:
    seen: List[str] = []
    for message in messages:
        message = message[:1].lower() + message[1:]
        message = _MODEL_CLASS_NAME.sub("", message)  # "a valid dictionary or instance of StreamOptions"
        if message not in seen:
            seen.append(message)
    return seen


def _wrong_type(param: str, expected: str, value: Any) -> GatewayError:
    return GatewayError(400, f"`{param}` must be {expected}; got {_describe(value)}.", code="invalid_type", param=param)


def _describe(value: Any) -> str:
    """What the client sent, by JSON type, with a short excerpt."""
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    name = "null" if value is None else kind.get(type(value), type(value).__name__)
    if value is None:
        return name
    shown = json.dumps(value, default=str)
    if len(shown) > _LONGEST_VALUE_SHOWN:
        shown = shown[: _LONGEST_VALUE_SHOWN - 3] + "..."
    return f"{name} ({shown})"
