#!/usr/bin/env bash
# Builds the project's environment from its own files: .venv from requirements-dev.lock (pinned,
# installed without resolving), the app in editable mode, and the pinned helm and promtool.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Noise filtered from pip's stderr: this machine's pip config lists local package folders that do not
# all exist; and where PyTorch's CPU index (named in the lock files) cannot be reached, pip warns once
# per package that it retries it (/whl/cpu/<package>/). Both are harmless; every other line is kept.
quiet_pip() {
  "$@" 2> >(grep -v -e "is ignored: it is neither a file nor a directory" \
    -e "^WARNING: Retrying (Retry(.*/whl/cpu/[^/]*/\$" >&2)
}
# pip asks every index for every package. Its default 5 retries with backoff cost ~8 s per package
# (~24 min for the lock) where an index is unreachable (download.pytorch.org is, on offline
# machines that carry torch in a local wheel folder). One retry is as fast as none there (urllib3
# does not back off before the first retry: measured 1.1 s for 5 packages either way, 39 s with the
# default), and still survives one dropped connection on a normal machine.
pip_retries=1

[ -x .venv/bin/python ] || python3.11 -m venv .venv
quiet_pip .venv/bin/pip install --quiet --upgrade pip==25.3
# torch==2.13.0+cpu comes from the PyTorch CPU index the lock file names (or a local wheel folder).
quiet_pip .venv/bin/pip install --quiet --retries "$pip_retries" --no-deps -r requirements-dev.lock
quiet_pip .venv/bin/pip install --quiet --retries "$pip_retries" --no-deps -e image
ci/install-tools.sh
