#!/usr/bin/env bash
# The whole test suite: unit tests, the kernel-facing unit tests again inside a VM that has just
# booted another kernel, then integration tests against a real dockerd and the real kernel.
# Installs what is missing, starts dockerd if none runs, builds the local test image.
# Ends with one line 'tests: N passed, N failed, N skipped'.
#
#   scripts/test.sh           the suite on this checkout
#   scripts/test.sh --fresh   the suite as a new machine sees it: a clean clone of this checkout's
#                             HEAD (no build outputs, node_modules or stamps of earlier runs) and
#                             the test images rebuilt from nothing
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --fresh ]; then
  fresh=$(mktemp -d /var/tmp/membrane-fresh.XXXXXX)
  trap 'rm -rf "$fresh"' EXIT
  git clone --quiet --no-hardlinks . "$fresh/membrane"
  echo "== fresh clone of $(git rev-parse --short HEAD) in $fresh/membrane"
  if docker info >/dev/null 2>&1; then
    docker image rm -f membrane-test:latest membrane-bench:latest >/dev/null 2>&1 || true
  fi
  bash "$fresh/membrane/scripts/test.sh"
  exit $?
fi

bash scripts/install-deps.sh
bash scripts/ensure-dockerd.sh
if [ -S /run/membrane/membrane.sock ] && node dist/plugin/cli/main.js status >/dev/null 2>&1; then
  echo "a Membrane daemon is running on this machine; the integration tests start their own. Stop it first." >&2
  exit 1
fi
bash integration/image/build.sh

# What the tests may create on the host, by name; anything new after the suite is a leak (the
# suite's own daemons' /sys/fs/bpf/membrane is removed below, after this snapshot is compared).
host_objects() {
  ls /sys/fs/bpf | grep -vx membrane | sed 's/^/bpffs /'
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
  ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
  # (nft by its path: npm puts node_modules/.bin, which has an unrelated nft, first on PATH.)
  # iptables-nft's own tables, Docker's DOCKER* chains and Membrane's MEMBRANE-* chains (kept across daemon restarts on
  # purpose, as Docker keeps its chains) are not leaks.
  /usr/sbin/nft list tables 2>/dev/null | grep -vE '^table ip6? (filter|nat|mangle|raw|security)$' | sed 's/^table /nft /' || true
  for t in filter nat mangle; do
    iptables -t "$t" -S 2>/dev/null | awk -v t="$t" '/^-N / && $2 !~ /^(MEMBRANE|DOCKER)(-|$)/ {print "iptables " t " " $2}'
    ip6tables -t "$t" -S 2>/dev/null | awk -v t="$t" '/^-N / && $2 !~ /^(MEMBRANE|DOCKER)(-|$)/ {print "ip6tables " t " " $2}'
  done
  docker ps -aq --filter label=membrane.test=1 | sed 's/^/container /'
  docker network ls -q --filter label=membrane.test=1 | sed 's/^/network /'
}
before_objects=$(mktemp)
host_objects | sort > "$before_objects"

passed=0; failed=0; skipped=0; status=0
# run_suite NAME COMMAND...: runs a TAP-producing command and adds up its results.
run_suite() {
  local name=$1 out
  shift
  out=$(mktemp)
  echo "== $name"
  "$@" 2>&1 | tee "$out" || status=1
  passed=$((passed + $(grep -cE '^ok [0-9]+' "$out" | tr -d ' ' || true) - $(grep -cE '^ok [0-9]+.*# SKIP' "$out" || true)))
  skipped=$((skipped + $(grep -cE '^ok [0-9]+.*# SKIP' "$out" || true)))
  failed=$((failed + $(grep -cE '^not ok [0-9]+' "$out" || true)))
  rm -f "$out"
}
run_suite unit npx ava --config ava.unit.config.js --tap
# A machine that booted seconds ago (the kernel's clock near zero: conntrack expiry, event times)
# on Debian 12's 6.1 LTS kernel (no tcx): the BPF fixtures and the clock arithmetic, in qemu.
# MEMBRANE_SKIP_VM=1 leaves it out (say so when reporting a run).
if [ "${MEMBRANE_SKIP_VM:-}" != 1 ]; then
  vm_args=(--timeout 1200)
  # The guest mounts fresh tmpfs on /tmp and /run: a checkout there (a clone in /tmp, as CI may
  # make) must be shared into it, writable, or the guest has no tree to test.
  case $PWD in /tmp|/tmp/*|/run|/run/*) vm_args+=(--out "$PWD") ;; esac
  run_suite "fresh boot, Linux 6.1 in qemu" integration/vm/run.sh "${vm_args[@]}" -- bash integration/vm/fresh-boot-suite.sh
fi
# Every daemon the integration tests start reads its state back after each write and fails the
# write if a restart would read something else (plugin/state/store.ts).
export MEMBRANE_STATE_VERIFY=1
run_suite integration npx ava --config ava.integration.config.js --tap
# The suite's daemons pinned their maps and links under /sys/fs/bpf/membrane (no daemon runs now:
# checked above): nothing of them stays on the machine.
rm -rf /sys/fs/bpf/membrane
leaked=$(comm -13 "$before_objects" <(host_objects | sort))
rm -f "$before_objects"
if [ -n "$leaked" ]; then
  echo "not ok - leak check: the suite left these on the host"
  printf '%s\n' "$leaked" | sed 's/^/  /'
  failed=$((failed + 1))
else
  echo "ok - leak check: no pin, namespace, interface, nft table, iptables chain, container or network left"
  passed=$((passed + 1))
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
