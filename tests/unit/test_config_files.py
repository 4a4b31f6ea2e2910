"""What `llm-serving serve` reads from a file and the Serve application it deploys from it."""

import pytest

from llm_serving.app import serve_application
from llm_serving.config import parse_app_config
from llm_serving.config_files import ConfigFileError, app_args_from_document

TRAFFIC = {"aliases": {"chat": {"variants": {"chat-v1": 90, "chat-v2": 10}}}}
ARGS = {
    "models": {"chat-v1": {"source": "org/a"}, "chat-v2": {"source": "org/b"}},
    "gateway": {"auth": {"mode": "none"}},
}


def serve_config(*deployments):
    return {
        "applications": [
            {"name": "other", "import_path": "other:app"},
            {"name": "llm-serving", "import_path": "llm_serving.app:build_app", "args": ARGS,
             "deployments": list(deployments)},
        ]
    }


def test_values_profile_and_bare_args_give_the_same_args():
    assert app_args_from_document({"app": {**ARGS, "traffic": TRAFFIC}}, "f") == {**ARGS, "traffic": TRAFFIC}
    assert app_args_from_document({**ARGS, "traffic": TRAFFIC}, "f") == {**ARGS, "traffic": TRAFFIC}


def test_serve_config_gives_traffic_back_from_the_gateway_user_config():
    args = app_args_from_document(serve_config({"name": "Gateway", "user_config": TRAFFIC}), "f")
    assert args == {**ARGS, "traffic": TRAFFIC}


@pytest.mark.parametrize(
    "document, message",
    [
        (serve_config({"name": "Gateway", "num_replicas": 3}),
         r"f: deployments\.Gateway sets num_replicas; only the gateway's user_config"),
        ({"applications": [{"name": "llm-serving", "import_path": "llm_serving.app:build_app",
                            "args": {**ARGS, "traffic": TRAFFIC},
                            "deployments": [{"name": "Gateway", "user_config": TRAFFIC}]}]},
         r"traffic config is set twice, in args\.traffic and in deployments\.Gateway\.user_config; keep one"),
        ({"applications": [{"name": "x", "import_path": "other:app"}]}, r"no application with import_path"),
        (["not", "a", "mapping"], r"expected a YAML mapping, got list"),
    ],
)
def test_unreadable_documents_name_the_problem(document, message):
    with pytest.raises(ConfigFileError, match=message):
        app_args_from_document(document, "f")


def test_serve_application_puts_traffic_in_the_gateway_user_config_not_in_args():
    config = parse_app_config({**ARGS, "traffic": TRAFFIC})
    application = serve_application(config)
    assert "traffic" not in application["args"]
    assert application["deployments"] == [
        {"name": "Gateway", "user_config": {"aliases": {"chat": {"variants": {"chat-v1": 90.0, "chat-v2": 10.0}}}}}
    ]
    # Read back, the application is the same config: the CLI can reload what it deployed.
    assert parse_app_config(app_args_from_document({"applications": [application]}, "f")) == config


def test_traffic_change_leaves_args_alone():
    """Serve restarts engines when args change, so a weight change must not touch them."""
    before = serve_application(parse_app_config({**ARGS, "traffic": TRAFFIC}))
    shifted = {"aliases": {"chat": {"variants": {"chat-v1": 50, "chat-v2": 50}}}}
    after = serve_application(parse_app_config({**ARGS, "traffic": shifted}))
    assert after["args"] == before["args"]
    assert after["deployments"] != before["deployments"]
