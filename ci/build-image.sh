#!/usr/bin/env bash
# Builds the CPU image (image/Dockerfile.cpu) on this kind of machine: no Docker daemon, no Docker Hub.
#   ci/build-image.sh              -> localhost/llm-serving:<version>-cpu
#   IMAGE=name:tag ci/build-image.sh
#   NO_CACHE=1 ci/build-image.sh   rebuild every layer (the base and the wheelhouse are kept)
# Steps, each skipped when its result is already there:
#  1. the tools: buildah, podman, runc, mmdebstrap (ci/install-image-tools.sh);
#  2. the base: Debian bookworm + Debian's python3.11 made with mmdebstrap from Debian's packages
#     (what debian:bookworm-slim holds, with its dpkg path excludes), imported as $BASE_IMAGE;
#  3. a wheelhouse on the host: `pip download --no-deps` of image/requirements-cpu.lock and of the
#     app's build backend, with the host's pip config (here torch==...+cpu comes from a local wheel
#     folder; elsewhere from the PyTorch CPU index the lock names), for CPython 3.11 on glibc <= 2.36
#     (bookworm) whatever the host is;
#  4. `buildah bud --layers` with the wheelhouse mounted at /wheelhouse in every RUN: the build
#     installs from it alone (image/install_app.py) and fetches nothing but Debian packages.
# Prints the build time and the image size at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' image/pyproject.toml)
IMAGE=${IMAGE:-localhost/llm-serving:${version}-cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-py311:local}
cache=${LLM_SERVING_IMAGE_CACHE:-$root/.cache/image}
wheelhouse=$cache/wheelhouse
lock=image/requirements-cpu.lock

ci/install-image-tools.sh

# --- 2. the base --------------------------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  if [ "$BASE_IMAGE" != localhost/bookworm-py311:local ]; then
    echo "build-image: base image $BASE_IMAGE is not in local storage; pull it or unset BASE_IMAGE" >&2
    exit 1
  fi
  mkdir -p "$cache"
  started=$(date +%s)
  # debian:bookworm-slim's dpkg excludes (docs but copyrights, man pages, info, locales, lintian).
  slim=(
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
  )
  mmdebstrap --quiet --variant=minbase --include=python3.11,python3.11-venv,ca-certificates "${slim[@]}" \
    bookworm "$cache/base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  # The image config debian:bookworm-slim has (an imported tarball has none: no PATH otherwise).
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$cache/base.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$cache/base.tar"
  echo "build-image: made base $BASE_IMAGE with mmdebstrap in $(($(date +%s) - started)) s"
fi

# --- 3. the wheelhouse --------------------------------------------------------------------------
build_requires=$(python3.11 -c 'import tomllib; print(" ".join(tomllib.load(open("image/pyproject.toml", "rb"))["build-system"]["requires"]))')
key=$(cat "$lock" <(echo "$build_requires") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$wheelhouse/.complete" 2>/dev/null)" != "$key" ]; then
  mkdir -p "$wheelhouse"
  started=$(date +%s)
  platforms=()
  for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  # --retries 0: an index that cannot be reached costs seconds per package otherwise.
  # (Wheels of an older lock stay; the exact pins pick the right ones.)
  python3.11 -m pip download --quiet --no-deps --retries 0 --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
    -r "$lock" $build_requires -d "$wheelhouse" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$key" > "$wheelhouse/.complete"
  echo "build-image: filled the wheelhouse $wheelhouse in $(($(date +%s) - started)) s"
fi

# --- 4. the build -------------------------------------------------------------------------------
cache_option=()
[ -n "${NO_CACHE:-}" ] && cache_option=(--no-cache)
started=$(date +%s)
buildah bud --isolation chroot --pull=never --layers "${cache_option[@]}" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --volume "$wheelhouse:/wheelhouse:ro" \
  -f image/Dockerfile.cpu -t "$IMAGE" .
seconds=$(($(date +%s) - started))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: built $IMAGE in $seconds s; image size $((size / 1000000)) MB ($size bytes, uncompressed)"
