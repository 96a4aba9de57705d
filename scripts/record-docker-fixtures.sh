#!/usr/bin/env bash
# Re-records plugin/docker/fixtures/docker-<version>.json: every plugin call a real dockerd makes
# for a representative session, with Membrane's answers. The replay test in
# plugin/docker/protocol.test.ts plays them back. Run as root with dockerd up and no Membrane running.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DOCKER:-/usr/bin/docker}   # the engine's own CLI version, so no newer-API flags sneak in
version=$($D version -f '{{.Server.Version}}' | cut -d+ -f1)
state=$(mktemp -d); log=$state/daemon.log
MEMBRANE_STATE_DIR=$state MEMBRANE_LOG_LEVEL=silly MEMBRANE_ULA_PREFIX=fde3:75a:9371::/48 \
  MEMBRANE_DEFAULT_IPV4_RANGES=10.210.0.0/16 node dist/plugin/cli/main.js daemon >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; $D rm -f rec1 >/dev/null 2>&1; $D network rm recnet1 recnet2 >/dev/null 2>&1; rm -rf "$state"' EXIT
sleep 1.5
commands=(
  "network create -d membrane --ipam-driver membrane --ipv6 --subnet 10.77.0.0/24 --ip-range 10.77.0.128/25 --gateway 10.77.0.1 --aux-address r=10.77.0.250 --subnet fd00:77::/64 -o com.docker.network.driver.mtu=1400 --internal recnet1"
  "network create -d membrane --ipam-driver membrane --ipv6 recnet2"
  "run -d --name rec1 --network recnet1 --ip 10.77.0.140 --ip6 fd00:77::140 --mac-address 02:42:ac:11:00:99 -p 8080:80 membrane-test:latest sleep 300"
  "network connect recnet2 rec1"
  "rm -f rec1"
  "network rm recnet1 recnet2"
)
for c in "${commands[@]}"; do $D $c >/dev/null; done
sleep 0.5
python3 - "$log" "$version" "${commands[@]}" > "plugin/docker/fixtures/docker-${version%.*}.json" <<'PY'
import json, sys
log, version, commands = sys.argv[1], sys.argv[2], sys.argv[3:]
calls = []
for line in open(log):
    d = json.loads(line)
    if d.get('message') == 'docker call bodies':
        calls.append({'method': d['method'], 'request': d['request'], 'status': d['status'], 'response': d['response']})
print(json.dumps({'recordedWith': f'dockerd {version}, ULA fde3:75a:9371::/48, IPv4 ranges 10.210.0.0/16',
                  'commands': ['docker ' + c for c in commands], 'calls': calls}, indent=1))
PY
echo "recorded $(grep -c '"method"' plugin/docker/fixtures/docker-${version%.*}.json) calls"
