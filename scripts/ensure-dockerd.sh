#!/usr/bin/env bash
# Starts dockerd if none answers, and waits until it does. Leaves a running one alone.
set -euo pipefail
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
if docker info >/dev/null 2>&1; then exit 0; fi
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl start docker
else
  nohup dockerd >/var/log/membrane-dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "membrane: dockerd did not come up; see /var/log/membrane-dockerd.log" >&2
exit 1
