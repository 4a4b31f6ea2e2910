#!/usr/bin/env bash
# Installs the tools that build and run the images without a Docker daemon or Docker Hub, from
# Debian's packages (system-wide, as root):
#   buildah     builds the Dockerfiles (`buildah bud --isolation chroot --pull=never`)
#   podman      runs the built image (`podman --runtime runc run ...`: podman's default crun fails here)
#   runc        the OCI runtime podman uses here
#   mmdebstrap  makes the Debian bookworm + python3.11 base from Debian's packages (ci/build-image.sh)
# As root with a kernel that has native overlayfs, neither fuse-overlayfs nor uidmap is needed.
# Idempotent: nothing is installed when every tool is already there.
set -euo pipefail

packages=(buildah podman runc mmdebstrap)
commands=(buildah podman runc mmdebstrap)

missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done

if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale or absent on a fresh machine: update only when the install fails.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

for tool in "${commands[@]}"; do
  command -v "$tool" >/dev/null || { echo "install-image-tools: $tool is missing after the install" >&2; exit 1; }
done
echo "image tools: $(buildah --version | cut -d' ' -f1-3), $(podman --version), $(runc --version | head -n 1)," \
  "mmdebstrap $(mmdebstrap --version | awk '{print $2}')"
