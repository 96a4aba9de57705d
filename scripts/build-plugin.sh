#!/usr/bin/env bash
# Builds Membrane as a managed Docker plugin: `membrane/membrane:latest` by default (argument 1
# overrides the name). Needs a built tree (npm run build) and dockerd.
#   docker network create -d membrane/membrane:latest --ipam-driver membrane/membrane:latest --ipv6 net1
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-membrane/membrane:latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

base=${MEMBRANE_PLUGIN_BASE:-}
if [ -z "$base" ]; then
  base=membrane-plugin-base:bookworm-2
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    # No registry here: make Debian's base ourselves (about 30 s from Debian's mirror).
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    debootstrap --variant=minbase --include=iptables,libmnl0,libbpf1,libelf1 bookworm "$work/base" >/dev/null
    rm -rf "$work/base/var/cache/apt/archives"/*.deb "$work/base/var/lib/apt/lists"/*
    tar -C "$work/base" -c . | docker import - "$base" >/dev/null
    rm -rf "$work/base"
  fi
fi

# Build context: the node binary and the built app with production dependencies only.
mkdir -p "$work/ctx/stage/membrane/native/build/Release" "$work/ctx/stage/membrane/bpf/build"
cp Dockerfile "$work/ctx/"
cp "$(command -v node)" "$work/ctx/stage/node"
cp -r dist package.json package-lock.json "$work/ctx/stage/membrane/"
cp native/build/Release/membrane_native.node "$work/ctx/stage/membrane/native/build/Release/"
cp bpf/build/membrane.bpf.o "$work/ctx/stage/membrane/bpf/build/"
cp -r node_modules "$work/ctx/stage/membrane/"
(cd "$work/ctx/stage/membrane" && npm prune --omit=dev --no-audit --no-fund --loglevel=error >/dev/null && rm -rf dist/integration)

image=membrane-plugin-rootfs:build
docker build -q --build-arg "BASE=$base" -t "$image" "$work/ctx" >/dev/null
mkdir -p "$work/plugin/rootfs"
cid=$(docker create "$image")
docker export "$cid" | tar -C "$work/plugin/rootfs" -x
docker rm "$cid" >/dev/null
cp config.json "$work/plugin/config.json"
mkdir -p /var/lib/membrane
docker plugin rm -f "$name" >/dev/null 2>&1 || true
docker plugin create "$name" "$work/plugin" >/dev/null
echo "created plugin $name (disabled); enable it with: docker plugin enable $name"
