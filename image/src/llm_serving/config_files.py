"""Reading the Serve application to run from the files users have: a values profile, a Serve
config, or a bare `app:` block."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from llm_serving.serve_config import IMPORT_PATH, serve_application

DEFAULT_PROFILE = Path("values") / "dev-cpu.yaml"


class ConfigFileError(ValueError):
    """The file holds no app to run; the message names the file and what was expected."""


def application_from_document(document: Any, source: str) -> Dict[str, Any]:
    """The Serve application (see llm_serving.serve_config) one of three shapes describes:

    - a Serve config (e.g. a RayService's serveConfigV2, as `helm template` renders it): its
      application whose import_path is llm_serving.app:build_app, exactly as given;
    - a values profile (the chart's values): its `app:` block, rendered as the chart renders it;
    - a bare `app:` block (a mapping with `models:`), rendered the same way.
    """
    if not isinstance(document, dict):
        raise ConfigFileError(f"{source}: expected a YAML mapping, got {type(document).__name__}")
    if "applications" in document:
        ours = [
            a for a in document["applications"] or [] if isinstance(a, dict) and a.get("import_path") == IMPORT_PATH
        ]
        if len(ours) != 1:
            found = "no application" if not ours else f"{len(ours)} applications"
            raise ConfigFileError(f"{source}: expected one application with import_path {IMPORT_PATH}, found {found}")
        others = len(document["applications"]) - 1
        if others:
            raise ConfigFileError(
                f"{source}: has {others} other application(s); llm-serving serve runs only the {IMPORT_PATH} one, "
                "remove the others"
            )
        return ours[0]
    if "app" in document:
        if not isinstance(document["app"], dict):
            raise ConfigFileError(f"{source}: `app:` must be a mapping (the app's models, gateway, rag and traffic)")
        return serve_application(document["app"])
    if "models" in document:
        return serve_application(document)
    raise ConfigFileError(
        f"{source}: found none of `app:` (values profile), `applications:` (Serve config) or `models:` (app block)"
    )


def read_yaml(path: Path) -> Any:
    """A YAML file's document, or ConfigFileError saying why it could not be read."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigFileError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path} is not valid YAML: {error}") from None


def load_application(path: Path) -> Dict[str, Any]:
    return application_from_document(read_yaml(path), str(path))


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
