#!/usr/bin/env bash
# Builds the benchmark image `membrane-bench:latest` without a registry: a busybox-static rootfs
# (like integration/image/build.sh) plus the host's iperf3 and sockperf with the shared libraries
# ldd lists for them, and crr (crr.c next to this script, built static: the load-balancer section's
# connect/request/response client and server) and rr (rr.c: the datapath section's request/response
# latency over TCP and UDP, IPv4 and IPv6), imported with `docker import`. Separate from
# `membrane-test:latest` so the benchmarks never change the image the other tests use. Idempotent: skips the build when the image
# exists and neither this script, crr.c, rr.c nor the tools' package versions changed (label membrane.image.hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MEMBRANE_BENCH_IMAGE:-membrane-bench:latest}
tools=(iperf3 sockperf)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install ${tools[*]} (scripts/install-deps.sh does)" >&2; exit 1; }
done
command -v gcc >/dev/null || { echo "gcc is missing: apt-get install gcc libc6-dev (scripts/install-deps.sh does)" >&2; exit 1; }
versions=$(dpkg-query -W -f='${Package}=${Version} ' "${tools[@]}" busybox-static 2>/dev/null || true)
. "$(dirname "$0")/../image/busybox-rootfs.sh"
hash=$( { cat "$0" "$(dirname "$0")/../image/busybox-rootfs.sh" "$here/crr.c" "$here/rr.c"; echo "$versions"; } | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "membrane.image.hash"}}' "$image" 2>/dev/null || true)" = "$hash" ]; then
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
make_busybox_rootfs "$rootfs"
[ -f /etc/services ] && cp /etc/services "$rootfs/etc/services"
for tool in "${tools[@]}"; do
  bin=$(readlink -f "$(command -v "$tool")")
  cp "$bin" "$rootfs/usr/bin/$tool"
  # Every absolute path ldd prints: the libraries (after "=>") and the loader itself.
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    [ -e "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
gcc -static -O2 -Wall -Werror -o "$rootfs/usr/bin/crr" "$here/crr.c"
gcc -static -O2 -Wall -Werror -o "$rootfs/usr/bin/rr" "$here/rr.c"
# The loader must find them where ldd did, whatever the host's /lib -> /usr/lib layout is.
echo '/lib/x86_64-linux-gnu' > "$rootfs/etc/ld.so.conf"
tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/bin/sh"]' -c "LABEL membrane.image.hash=$hash" -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  -c 'ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64' \
  - "$image" >/dev/null
# Refuse an image whose tools do not start (a missing library shows here, not in the middle of a run).
docker run --rm --network none "$image" sh -c 'iperf3 --version >/dev/null && sockperf --version >/dev/null && { crr 2>/dev/null; [ $? -eq 2 ]; } && { rr 2>/dev/null; [ $? -eq 2 ]; }' \
  || { docker image rm -f "$image" >/dev/null 2>&1 || true; echo "built $image but its tools do not start" >&2; exit 1; }
echo "built $image"
