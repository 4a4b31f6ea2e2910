"""Reading the app's args from the files users have: a values profile, a Serve config, or bare args."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

IMPORT_PATH = "llm_serving.app:build_app"
APP_NAME = "llm-serving"  # the Serve application's name, as the chart renders it
DEFAULT_PROFILE = Path("values") / "dev-cpu.yaml"


class ConfigFileError(ValueError):
    """The file cannot be read as app args; the message names the file and what was expected."""


def app_args_from_document(document: Any, source: str) -> Dict[str, Any]:
    """Take the app's args out of one of three shapes:

    - a values profile (the chart's values): its `app:` block;
    - a Serve config (e.g. a RayService's rendered serveConfigV2): the `args` of the application
      whose import_path is llm_serving.app:build_app, with `traffic` taken back from the gateway
      deployment's `user_config` where the chart puts it;
    - the args themselves (a mapping with `models:`).
    """
    if not isinstance(document, dict):
        raise ConfigFileError(f"{source}: expected a YAML mapping, got {type(document).__name__}")
    if "applications" in document:
        for application in document["applications"] or []:
            if application.get("import_path") == IMPORT_PATH:
                return _args_of_serve_application(application, source)
        raise ConfigFileError(f"{source}: no application with import_path {IMPORT_PATH}")
    if "app" in document:
        return document["app"]
    if "models" in document:
        return document
    raise ConfigFileError(
        f"{source}: found none of `app:` (values profile), `applications:` (Serve config) or `models:` (app args)"
    )


def _args_of_serve_application(application: Dict[str, Any], source: str) -> Dict[str, Any]:
    args = dict(application.get("args") or {})
    traffic_from = "args.traffic" if "traffic" in args else None
    for deployment in application.get("deployments") or []:
        name = deployment.get("name", "?")
        unread = sorted(set(deployment) - {"name", "user_config"})
        if unread:
            raise ConfigFileError(
                f"{source}: deployments.{name} sets {', '.join(unread)}; only the gateway's user_config "
                "(the traffic config) is read from `deployments:`, set replicas and resources under `models`"
            )
        if "user_config" in deployment:
            if traffic_from:
                raise ConfigFileError(
                    f"{source}: the traffic config is set twice, in {traffic_from} and in "
                    f"deployments.{name}.user_config; keep one"
                )
            args["traffic"] = deployment["user_config"] or {}
            traffic_from = f"deployments.{name}.user_config"
    return args


def load_app_args(path: Path) -> Dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigFileError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path} is not valid YAML: {error}") from None
    return app_args_from_document(document, str(path))


def find_default_profile() -> Optional[Path]:
    """values/dev-cpu.yaml of the checkout we run from ($LLM_SERVING_PROFILE overrides)."""
    if os.environ.get("LLM_SERVING_PROFILE"):
        return Path(os.environ["LLM_SERVING_PROFILE"])
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / DEFAULT_PROFILE
            if candidate.is_file():
                return candidate
    return None
