#!/usr/bin/env bash
# Runs inside the VM (integration/vm/run.sh): the unit tests that meet the kernel, on a kernel that
# booted seconds ago. Fails first if the guest has been up for a minute or more, because then it
# would no longer show what a new machine shows (CLOCK_MONOTONIC, which bpf_ktime_get_ns() reads,
# starts near zero at boot).
set -euo pipefail
uptime_s=$(cut -d' ' -f1 /proc/uptime)
echo "# kernel $(uname -r), up ${uptime_s} s when the suite starts"
if ! awk -v u="$uptime_s" 'BEGIN { exit !(u < 60) }'; then
  echo "not ok 1 - fresh boot: the guest has been up ${uptime_s} s, not seconds"
  exit 1
fi
# --serial: under TCG a BPF object load takes seconds; tests that wait for ring-buffer events must
# not share the event loop with them (the waits are bounded in time).
exec npx ava --serial --tap --config ava.unit.config.js \
  dist/plugin/clock.test.js dist/plugin/datapath/datapath.test.js dist/plugin/datapath/policy.test.js dist/plugin/datapath/lb.test.js \
  dist/plugin/kernel/bpf-native.test.js
