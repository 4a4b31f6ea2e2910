"""llm_serving._ray is the one door to Ray's internals: each private name and attribute behind it
still exists in the installed Ray (so a Ray upgrade fails here, naming what moved), and no other
module of the app reaches past it."""

from __future__ import annotations

import contextvars
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from llm_serving import _ray
from llm_serving.config import ACCELERATOR_TYPES

PACKAGE = Path(_ray.__file__).parent
DOOR = Path(_ray.__file__)
# Ray's private attributes the app used to read and now does without (it keeps its own copy).
NO_LONGER_USED = ("_llm_config", "_model_cards")


@pytest.mark.parametrize("name", sorted(_ray.PRIVATE_NAMES))
def test_each_private_name_behind_the_door_exists_in_this_ray(name):
    try:
        value = getattr(_ray, name)
    except AttributeError as error:  # the door's message names the Ray name and what we use it for
        pytest.fail(str(error), pytrace=False)
    assert value is not None


@pytest.mark.parametrize(
    "module, owner, attribute", _ray.PRIVATE_ATTRIBUTES, ids=[f"{o}.{a}" for _, o, a in _ray.PRIVATE_ATTRIBUTES]
)
def test_each_private_attribute_the_door_touches_exists_in_this_ray(module, owner, attribute):
    cls = getattr(importlib.import_module(module), owner)
    present = (
        hasattr(cls, attribute)  # a method
        or attribute in getattr(cls, "__private_attributes__", {})  # a pydantic private attribute
        or re.search(rf"self\.{attribute}\s*[:=]", inspect.getsource(cls))  # set on the instance
    )
    assert present, f"{module}.{owner} no longer has `{attribute}`; update the function in llm_serving/_ray.py that uses it"


@pytest.mark.parametrize(
    "module, function, keyword", _ray.PRIVATE_KEYWORDS, ids=[f"{f}({k}=)" for _, f, k in _ray.PRIVATE_KEYWORDS]
)
def test_each_private_keyword_the_door_passes_is_still_accepted(module, function, keyword):
    callable_ = getattr(importlib.import_module(module), function)
    # A named parameter, or (ray.init's way) a keyword it pops from **kwargs by name.
    accepted = keyword in inspect.signature(callable_).parameters or f'"{keyword}"' in inspect.getsource(callable_)
    assert accepted, f"{module}.{function} no longer takes {keyword}; see llm_serving._ray.PRIVATE_KEYWORDS"


def test_the_serve_hook_the_engine_server_overrides_is_still_rays():
    # Not private, but undocumented: were it renamed, the direct-streaming engine replica would
    # silently serve vLLM's app without the gateway (no auth, no limits).
    from ray.serve.llm.deployment import LLMServer

    assert inspect.iscoroutinefunction(getattr(LLMServer, "__serve_build_asgi_app__", None)), (
        "Ray's LLMServer no longer has `__serve_build_asgi_app__`; move GatewayLLMServer's override to its new hook"
    )


def test_the_asgi_app_accessors_agree_with_serves_public_app_property():
    class Plain:
        pass

    class Replica(make_fastapi_ingress(Plain, endpoint_map={}, app=FastAPI())):
        def __del__(self):  # Serve awaits the real (async) one when a replica stops; none runs here
            pass

    replica = Replica.__new__(Replica)  # no replica context needed: only the app slot is used
    app = FastAPI()
    _ray.set_asgi_app(replica, app)
    assert _ray.asgi_app_of(replica) is app
    assert replica.app is app


def test_default_handles_are_the_handles_the_ingress_was_given():
    handles = {"m": object()}
    ingress = OpenAiIngress(handles, {"m": object()})
    assert _ray.default_handles(ingress) == handles


def test_outside_the_request_keeps_the_request_id_but_not_the_parent_link():
    """Handle calls made outside the request are not children Serve cancels with it (what Serve
    keys them by: the context's internal id, when cancel_on_parent_request_cancel is set)."""
    from ray.serve.context import _get_serve_request_context, _RequestContext

    def serving_request():
        _ray.serve_request_context.set(
            _RequestContext(request_id="client-1", _internal_request_id="parent-1", cancel_on_parent_request_cancel=True)
        )
        outside = _ray.outside_the_request().run(_get_serve_request_context)
        return outside, _get_serve_request_context()

    outside, inside = contextvars.copy_context().run(serving_request)
    assert (outside.request_id, outside.cancel_on_parent_request_cancel) == ("client-1", False)
    assert outside._internal_request_id not in ("", "parent-1")
    assert (inside._internal_request_id, inside.cancel_on_parent_request_cancel) == ("parent-1", True)  # untouched


def test_our_accelerator_types_are_the_installed_rays():
    rays = tuple(accelerator.value for accelerator in _ray.AcceleratorType)
    assert ACCELERATOR_TYPES == rays, (
        "Ray's AcceleratorType changed; copy its values into llm_serving/config.py ACCELERATOR_TYPES "
        f"(added: {sorted(set(rays) - set(ACCELERATOR_TYPES))}, removed: {sorted(set(ACCELERATOR_TYPES) - set(rays))}) "
        "and regenerate the values schema (ci/gen_values_schema.py)"
    )


def _private_ray_references():
    names = {attribute for _, _, attribute in _ray.PRIVATE_ATTRIBUTES}
    names |= {keyword for _, _, keyword in _ray.PRIVATE_KEYWORDS}
    names |= {attribute for _, attribute, _ in _ray.PRIVATE_NAMES.values() if attribute and attribute.startswith("_")}
    names |= set(NO_LONGER_USED)
    patterns = [re.escape("ray.llm._internal"), re.escape("ray.serve._private")]
    patterns += [rf"(?<!\w){re.escape(name)}(?!\w)" for name in sorted(names)]
    return re.compile("|".join(patterns))


def test_no_module_but_the_door_names_rays_internals():
    private = _private_ray_references()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == DOOR:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = private.search(line)
            if match:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {match.group(0)}")
    assert not found, "Ray's internals outside llm_serving/_ray.py (go through the door):\n" + "\n".join(found)


def test_the_scan_would_see_a_private_import_or_attribute():
    private = _private_ray_references()
    assert private.search("from ray.serve._private.constants import X")
    assert private.search("app = self._asgi_app")
    assert private.search("self._set_asgi_app(app)")
    assert not private.search("def to_llm_config(name)")


def _ray_modules_after(code: str):
    script = code + "\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own print of a list of str


def test_importing_the_door_or_the_config_imports_no_ray():
    # The CLI sets Ray's environment before importing Ray; the schema generator runs without Ray.
    assert _ray_modules_after("import llm_serving._ray, llm_serving.config, llm_serving.local_binding") == []


def test_the_worker_setup_hooks_name_loads_serves_replica_but_not_ray_serve_llm():
    modules = _ray_modules_after("from llm_serving._ray import serve_replica")
    assert "ray.serve._private.replica" in modules
    assert not [m for m in modules if m.startswith(("ray.llm", "vllm"))], modules


def test_serve_multiplexed_still_keeps_its_wrapper_and_cache_where_forget_adapter_looks():
    from ray.serve import api, multiplex

    assert f'"{_ray.MULTIPLEX_WRAPPER_ATTRIBUTE}"' in inspect.getsource(api.multiplexed), (
        "serve.multiplexed no longer keeps its wrapper in __serve_multiplex_wrapper; update _ray.forget_adapter"
    )
    assert re.search(r"self\.models\s*=", inspect.getsource(multiplex._ModelMultiplexWrapper)), (
        "Serve's multiplex wrapper no longer caches models in `models`; update _ray.forget_adapter"
    )
