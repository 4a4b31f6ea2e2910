"""The Serve application `llm-serving serve` deploys from each kind of file, and its one check."""

import pytest

from llm_serving.config import ConfigError
from llm_serving.config_files import ConfigFileError, application_from_document
from llm_serving.serve_config import (
    GATEWAY_DEPLOYMENT,
    ServeConfigError,
    check_serve_application,
    on_local_cpu,
    serve_application,
)
from llm_serving.traffic_config import TrafficConfigError

TRAFFIC = {"aliases": {"chat": {"variants": {"chat-v1": 90, "chat-v2": 10}}}}
ARGS = {
    "models": {"chat-v1": {"source": "org/a"}, "chat-v2": {"source": "org/b"}},
    "gateway": {"auth": {"mode": "none"}},
}
APPLICATION = {
    "name": "llm-serving",
    "import_path": "llm_serving.app:build_app",
    "route_prefix": "/",
    "args": ARGS,
    "deployments": [{"name": GATEWAY_DEPLOYMENT, "user_config": TRAFFIC}],
}


def test_a_profile_and_a_bare_app_block_render_as_the_chart_does():
    assert application_from_document({"app": {**ARGS, "traffic": TRAFFIC}}, "f") == APPLICATION
    assert application_from_document({**ARGS, "traffic": TRAFFIC}, "f") == APPLICATION


def test_a_serve_config_is_taken_exactly_as_given():
    given = {**APPLICATION, "route_prefix": "/llm", "deployments": [{"name": "Gateway"}]}
    assert application_from_document({"applications": [given]}, "f") is given


def test_without_traffic_the_gateway_user_config_is_empty():
    # So removing app.traffic from a profile resets it in place too.
    assert serve_application(ARGS)["deployments"] == [{"name": "Gateway", "user_config": {}}]


def test_a_traffic_change_leaves_args_alone():
    """Serve restarts engines when args change, so a weight change must not touch them."""
    shifted = {"aliases": {"chat": {"variants": {"chat-v1": 50, "chat-v2": 50}}}}
    before, after = serve_application({**ARGS, "traffic": TRAFFIC}), serve_application({**ARGS, "traffic": shifted})
    assert after["args"] == before["args"] and after["deployments"] != before["deployments"]


@pytest.mark.parametrize(
    "document, message",
    [
        ({"applications": [{"name": "x", "import_path": "other:app"}]},
         r"f: expected one application with import_path llm_serving.app:build_app, found no application"),
        ({"applications": [APPLICATION, {"name": "x", "import_path": "other:app"}]},
         r"f: has 1 other application\(s\); llm-serving serve runs only the llm_serving.app:build_app one"),
        ({"app": ["a", "list"]}, r"f: `app:` must be a mapping"),
        (["not", "a", "mapping"], r"f: expected a YAML mapping, got list"),
        ({"modles": {}}, r"f: found none of `app:`"),
    ],
)
def test_unreadable_documents_name_the_problem(document, message):
    with pytest.raises(ConfigFileError, match=message):
        application_from_document(document, "f")


def test_the_check_gives_what_build_app_and_reconfigure_will_make_of_it():
    checked = check_serve_application(APPLICATION, "f")
    assert checked.application is APPLICATION
    assert list(checked.config.models) == ["chat-v1", "chat-v2"]
    assert checked.traffic.aliases["chat"].variants == {"chat-v1": 90, "chat-v2": 10}


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"deployments": [{"name": "Gateway", "num_replicas": 3}]}, ServeConfigError,
         r"f: deployments\.Gateway sets num_replicas; only its user_config"),
        ({"deployments": [{"name": "GatewayLLMServer:chat-v1", "num_replicas": 3}]}, ServeConfigError,
         r"f: deployments\.GatewayLLMServer:chat-v1 is not a deployment to override; only Gateway"),
        ({"import_path": "other:app"}, ServeConfigError, r"import_path must be llm_serving.app:build_app"),
        ({"args": {**ARGS, "traffic": TRAFFIC}}, ConfigError,
         r"args: traffic is not a build argument: it is the Gateway deployment's user_config"),
        ({"deployments": [{"name": "Gateway", "user_config": {"aliases": {"chat": {"variants": {"v3": 1}}}}}]},
         TrafficConfigError, r"traffic\.aliases\.chat\.variants: v3 not served; variants must be served models"),
    ],
)
def test_the_check_refuses_what_the_app_would(change, error, message):
    with pytest.raises(error, match=message):
        check_serve_application({**APPLICATION, **change}, "f")


def test_on_local_cpu_overrides_only_gpu_only_settings():
    gpu = {"source": "org/a", "accelerator_type": "L40S", "tensor_parallel_size": 4, "max_model_len": 4096,
           "worker_group": "l40s-4x"}
    application = {**APPLICATION, "args": {**ARGS, "models": {"chat-v1": gpu, "chat-v2": {"source": "org/b"}}}}
    local = on_local_cpu(application)
    assert local["args"]["models"]["chat-v1"] == {"source": "org/a", "device": "cpu", "tensor_parallel_size": 1,
                                                  "max_model_len": 4096}
    assert local["deployments"] == application["deployments"]
    assert application["args"]["models"]["chat-v1"] is gpu and "accelerator_type" in gpu  # the input is untouched
    check_serve_application(local, "f")
