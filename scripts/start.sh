#!/usr/bin/env bash
# Starts Membrane on this machine: installs what is missing, builds, starts dockerd if needed,
# then runs the daemon in the background (log: /var/log/membrane.log). For production, use the
# systemd unit in the README instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/ensure-dockerd.sh
api=/run/membrane/membrane.sock
if node dist/plugin/cli/main.js status >/dev/null 2>&1; then
  echo "membrane is already running"; exit 0
fi
nohup node dist/plugin/cli/main.js daemon >>/var/log/membrane.log 2>&1 &
echo $! > /run/membrane.pid
for _ in $(seq 1 50); do
  [ -S "$api" ] && node dist/plugin/cli/main.js status >/dev/null 2>&1 && break
  sleep 0.2
done
node dist/plugin/cli/main.js status >/dev/null || { echo "membrane did not start; see /var/log/membrane.log" >&2; exit 1; }
echo "membrane is running (pid $(cat /run/membrane.pid), log /var/log/membrane.log)"
echo "try: docker network create -d membrane --ipam-driver membrane --ipv6 net1"
