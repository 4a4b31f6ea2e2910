"""Reading the app's args from the files users have: a values profile, a Serve config, or bare args."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

IMPORT_PATH = "llm_serving.app:build_app"
DEFAULT_PROFILE = Path("values") / "dev-cpu.yaml"


class ConfigFileError(ValueError):
    """The file cannot be read as app args; the message names the file and what was expected."""


def app_args_from_document(document: Any, source: str) -> Dict[str, Any]:
    """Take the app's args out of one of three shapes:

    - a values profile (the chart's values): its `app:` block;
    - a Serve config (e.g. a RayService's rendered serveConfigV2): the `args` of the application
      whose import_path is llm_serving.app:build_app;
    - the args themselves (a mapping with `models:`).
    """
    if not isinstance(document, dict):
        raise ConfigFileError(f"{source}: expected a YAML mapping, got {type(document).__name__}")
    if "applications" in document:
        for application in document["applications"] or []:
            if application.get("import_path") == IMPORT_PATH:
                return application.get("args") or {}
        raise ConfigFileError(f"{source}: no application with import_path {IMPORT_PATH}")
    if "app" in document:
        return document["app"]
    if "models" in document:
        return document
    raise ConfigFileError(
        f"{source}: found none of `app:` (values profile), `applications:` (Serve config) or `models:` (app args)"
    )


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
