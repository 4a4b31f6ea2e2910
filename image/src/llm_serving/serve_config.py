"""The Serve document: the one Serve application that runs the app, as a RayService's serveConfigV2 holds it.

    applications:
    - name: llm-serving
      import_path: llm_serving.app:build_app
      route_prefix: /
      args: <a profile's app: block without traffic>  -> build_app, validated by config.parse_app_config
      deployments:
      - name: Gateway
        user_config: <app.traffic>                    -> reconfigure, validated by parse_traffic_config

The chart renders it (templates/_helpers.tpl, llm-serving.serveConfig) and `serve_application`
below is its twin for the local command; tests/charts/test_llm_serving_traffic.py checks the two
agree for every profile. `args` and `user_config` are split because Serve restarts every replica
(engines too) when an application's args change, but only reconfigures the replicas of a
deployment whose user_config alone changed.

The gateway deployment is called Gateway in both topologies (the gateway deployment in front of
the engines, or the one engine replica itself on the direct-streaming path), so the chart renders a
constant and nothing mirrors Ray Serve LLM's deployment naming.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict

from pydantic import Field

from llm_serving.config import AppConfig, ConfigError, parse_app_config
from llm_serving.traffic_config import TrafficConfig, parse_traffic_config

IMPORT_PATH = "llm_serving.app:build_app"
APP_NAME = "llm-serving"
GATEWAY_DEPLOYMENT = "Gateway"


class AppBlock(AppConfig):
    """A values profile's `app:` block: the build args and `traffic`. Only the chart's values schema
    is generated from it (ci/gen_values_schema.py); the two parts are validated apart, as the app
    receives them (check_serve_application)."""

    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description=(
            "Aliases with weighted variants, sticky routing and per-API-key limits. Applied in place "
            "(Ray Serve user_config of the Gateway deployment): changing it restarts nothing."
        ),
    )


class ServeConfigError(ConfigError):
    """A Serve application the local command cannot run as given; the message says what and the fix."""


def serve_application(app_values: Dict[str, Any]) -> Dict[str, Any]:
    """A profile's `app:` block as the Serve application the chart renders from it."""
    return {
        "name": APP_NAME,
        "import_path": IMPORT_PATH,
        "route_prefix": "/",
        "args": {key: value for key, value in app_values.items() if key != "traffic"},
        "deployments": [{"name": GATEWAY_DEPLOYMENT, "user_config": app_values.get("traffic") or {}}],
    }


@dataclass(frozen=True)
class CheckedApplication:
    """A Serve application that validates: deploy `application` as it is; `config` and `traffic`
    are what build_app and the gateway's reconfigure will make of it."""

    application: Dict[str, Any]
    config: AppConfig
    traffic: TrafficConfig


def check_serve_application(application: Dict[str, Any], source: str) -> CheckedApplication:
    """Validate the application the way the app will (raises ConfigError or ServeConfigError):
    its args with parse_app_config, the Gateway's user_config with parse_traffic_config."""
    if application.get("import_path") != IMPORT_PATH:
        raise ServeConfigError(f"{source}: the application's import_path must be {IMPORT_PATH}")
    user_config = None
    for deployment in application.get("deployments") or []:
        name = deployment.get("name", "?")
        if name != GATEWAY_DEPLOYMENT:
            raise ServeConfigError(
                f"{source}: deployments.{name} is not a deployment to override; only {GATEWAY_DEPLOYMENT} "
                "(its user_config, the traffic config) is, and replicas and resources are set under args.models"
            )
        unread = sorted(set(deployment) - {"name", "user_config"})
        if unread:
            raise ServeConfigError(
                f"{source}: deployments.{name} sets {', '.join(unread)}; only its user_config (the traffic "
                "config) may be set there, replicas and resources under args.models"
            )
        user_config = deployment.get("user_config")
    config = parse_app_config(application.get("args") or {})
    traffic = parse_traffic_config(user_config, list(config.models))
    return CheckedApplication(application, config, traffic)


def on_local_cpu(application: Dict[str, Any]) -> Dict[str, Any]:
    """The application with each model's GPU-only settings replaced, to run a GPU profile on a laptop
    (`llm-serving serve --on-cpu`); the only change the local command makes to what it is given."""
    changed = copy.deepcopy(application)
    for model in (changed.get("args") or {}).get("models", {}).values():
        if isinstance(model, dict):
            for gpu_only in ("accelerator_type", "worker_group"):
                model.pop(gpu_only, None)
            model.update(device="cpu", tensor_parallel_size=1)
    return changed
