#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests against a real dockerd and the real
# kernel. Installs what is missing, starts dockerd if none runs, builds the local test image.
# Ends with one line 'tests: N passed, N failed, N skipped'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/ensure-dockerd.sh
if [ -S /run/membrane/membrane.sock ] && node dist/plugin/cli/main.js status >/dev/null 2>&1; then
  echo "a Membrane daemon is running on this machine; the integration tests start their own. Stop it first." >&2
  exit 1
fi
bash integration/image/build.sh

passed=0; failed=0; skipped=0; status=0
run_suite() {
  local name=$1 config=$2 out
  out=$(mktemp)
  echo "== $name"
  npx ava --config "$config" --tap 2>&1 | tee "$out" || status=1
  passed=$((passed + $(grep -cE '^ok [0-9]+' "$out" | tr -d ' ' || true) - $(grep -cE '^ok [0-9]+.*# SKIP' "$out" || true)))
  skipped=$((skipped + $(grep -cE '^ok [0-9]+.*# SKIP' "$out" || true)))
  failed=$((failed + $(grep -cE '^not ok [0-9]+' "$out" || true)))
  rm -f "$out"
}
run_suite unit ava.unit.config.js
run_suite integration ava.integration.config.js
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
