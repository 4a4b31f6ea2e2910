#!/usr/bin/env bash
# Every chart changed since a base ref must bump `version` in its Chart.yaml (what ct's
# check-version-increment does, with git alone).
#
#   ci/check-chart-versions.sh [BASE_REF]
#
# BASE_REF defaults to $CHART_BASE_REF, then origin/main if that exists. With no base ref at all
# (a clone without a remote) there is nothing to compare against: it says so and exits 0.
# Compares the working tree (committed, staged, unstaged and untracked files) with the merge base
# of BASE_REF and HEAD. Changes under a chart's ci/ folder (lint scenarios, not packaged) and new
# charts need no bump. Run it from anywhere inside the repository.
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"

base=${1:-${CHART_BASE_REF:-}}
if [ -z "$base" ]; then
  if git rev-parse --verify --quiet "origin/main^{commit}" >/dev/null; then
    base=origin/main
  else
    echo "check-chart-versions: no base ref (no argument, CHART_BASE_REF or origin/main); nothing to compare"
    exit 0
  fi
fi
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "check-chart-versions: base ref '$base' is not a commit here (fetch it first)" >&2
  exit 2
fi
merge_base=$(git merge-base "$base" HEAD)

chart_version() {  # the top-level `version:` of a Chart.yaml read from stdin
  sed -n -E 's/^version:[[:space:]]*["'\'']?([^"'\''[:space:]#]+).*$/\1/p' | head -n 1
}

failed=0
for chart_yaml in charts/*/Chart.yaml; do
  chart=$(dirname "$chart_yaml")
  if ! git cat-file -e "$merge_base:$chart_yaml" 2>/dev/null; then
    echo "check-chart-versions: $chart is new since $base"
    continue
  fi
  changed=$(
    {
      git diff --name-only "$merge_base" -- "$chart"
      git ls-files --others --exclude-standard -- "$chart"
    } | grep -v -E "^$chart/ci/" | sort -u || true
  )
  [ -z "$changed" ] && continue
  old=$(git show "$merge_base:$chart_yaml" | chart_version)
  new=$(chart_version < "$chart_yaml")
  highest=$(printf '%s\n%s\n' "$old" "$new" | sort -V | tail -n 1)
  if [ "$old" = "$new" ] || [ "$highest" != "$new" ]; then
    echo "check-chart-versions: $chart changed since $base but its version went from $old to $new;" \
      "bump \`version\` in $chart_yaml (changed: $(echo "$changed" | tr '\n' ' '))" >&2
    failed=1
  else
    echo "check-chart-versions: $chart $old -> $new"
  fi
done
exit "$failed"
