#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for Membrane, then builds it. Idempotent and quiet
# when everything is present. Needs root (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io busybox-static iptables nftables iproute2 libmnl-dev g++ gcc libc6-dev make python3 file clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool iperf3 sockperf docker-compose bind9-dnsutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "membrane: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v node >/dev/null || { echo "membrane: Node.js 20 or newer is required (node not found)" >&2; exit 1; }

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.membrane-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
npm run --silent build >/dev/null
