"""The lock files install with a plain `pip install --no-deps -r <lock>`: every pin with a local
version (torch==2.13.0+cpu) comes with the index that publishes it, in the same file, so neither
users nor CI need a pip config or PIP_EXTRA_INDEX_URL for it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCKS = [REPO / "requirements-dev.lock", REPO / "image" / "requirements-cpu.lock"]
# Local version label -> the index that publishes builds with it (PyTorch's per-variant indexes).
INDEX_OF_LOCAL_LABEL = {"cpu": "https://download.pytorch.org/whl/cpu"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s+;#]+)(?:\+(?P<local>[A-Za-z0-9.]+))?$")
INDEX_OPTION = re.compile(r"^(?:--extra-index-url|--index-url|-i)(?:\s+|=)(?P<url>\S+)$")


def parse(text: str) -> Tuple[List[re.Match], List[str]]:
    """The pins and the index URLs of a lock file; any other line is an error."""
    pins, indexes = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if option := INDEX_OPTION.match(line):
            indexes.append(option.group("url").rstrip("/"))
        elif pin := PIN.match(line):
            pins.append(pin)
        else:
            raise AssertionError(f"line {number} is neither a name==version pin nor an index option: {line!r}")
    return pins, indexes


def unprovided_local_pins(text: str) -> List[str]:
    """Pins with a local version whose index is not named in the same file."""
    pins, indexes = parse(text)
    missing = []
    for pin in pins:
        label = pin.group("local")
        if label is None:
            continue
        index = INDEX_OF_LOCAL_LABEL.get(label)
        if index is None or index not in indexes:
            missing.append(f"{pin.group(0)} (needs --extra-index-url {index or '<the index that publishes +' + label + '>'})")
    return missing


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_version_pin_names_its_index(lock):
    pins, _ = parse(lock.read_text())
    assert any(pin.group("name") == "torch" and pin.group("local") == "cpu" for pin in pins), "torch's CPU build is pinned"
    assert unprovided_local_pins(lock.read_text()) == []


def test_a_lock_without_the_index_is_caught():
    assert unprovided_local_pins("idna==3.20\ntorch==2.13.0+cpu\n") == [
        "torch==2.13.0+cpu (needs --extra-index-url https://download.pytorch.org/whl/cpu)"
    ]
    assert unprovided_local_pins("--extra-index-url https://download.pytorch.org/whl/cpu/\ntorch==2.13.0+cpu\n") == []
    assert unprovided_local_pins("--extra-index-url https://download.pytorch.org/whl/cpu\ntorch==2.13.0+cu128\n") == [
        "torch==2.13.0+cu128 (needs --extra-index-url <the index that publishes +cu128>)"
    ]


def test_an_unknown_line_is_an_error():
    with pytest.raises(AssertionError, match="line 2"):
        parse("idna==3.20\n-e ./image\n")
