"""The image definitions: hadolint-clean, pinned bases, no weights or secrets baked in."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

IMAGE = Path(__file__).resolve().parents[2] / "image"
DOCKERFILES = [IMAGE / "Dockerfile", IMAGE / "Dockerfile.cpu"]
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    result = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_args_and_the_user_is_not_root(dockerfile):
    text = dockerfile.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1")
    for base in re.findall(r"^FROM (\S+)", text, flags=re.M):
        assert base.startswith("${"), f"base {base} is not a pinned ARG"
    for default in re.findall(r"^ARG \w+_IMAGE=(\S+)", text, flags=re.M):
        assert re.search(r":\d+\.\d+\.\d+-py311-", default), f"{default} is not pinned to a release"
    assert re.findall(r"^USER (\S+)", text, flags=re.M)[-1] == "1000"
    assert not re.search(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|\.safetensors|huggingface-cli download", text)
