#!/usr/bin/env bash
# Builds the project's environment from its own files: .venv from requirements-dev.lock (pinned,
# installed without resolving), the app in editable mode, and the pinned helm and promtool.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# This machine's pip config lists local package folders that do not all exist; silence that noise.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

[ -x .venv/bin/python ] || python3.11 -m venv .venv
quiet_pip .venv/bin/pip install --quiet --upgrade pip==25.3
# torch==2.13.0+cpu comes from the PyTorch CPU wheel index (or a local wheel folder in pip's config).
quiet_pip .venv/bin/pip install --quiet --no-deps -r requirements-dev.lock
quiet_pip .venv/bin/pip install --quiet --no-deps -e image
ci/install-tools.sh
