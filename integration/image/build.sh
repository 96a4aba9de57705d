#!/usr/bin/env bash
# Builds the local test image `membrane-test:latest` without a registry: a busybox-static rootfs
# (ping, nc, nslookup, ip, wget, httpd) plus a static UDP echo tool (udpecho.c; busybox's nc has
# no UDP) imported with `docker import`. Idempotent: skips the build
# when the image exists and this script has not changed since (label membrane.image.hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MEMBRANE_TEST_IMAGE:-membrane-test:latest}
. "$here/busybox-rootfs.sh"
hash=$(cat "$0" "$here/busybox-rootfs.sh" "$here/udpecho.c" | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "membrane.image.hash"}}' "$image" 2>/dev/null || true)" = "$hash" ]; then
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
make_busybox_rootfs "$rootfs"
mkdir -p "$rootfs/var/www"
gcc -static -O2 -Wall -Werror -o "$rootfs/bin/udpecho" "$here/udpecho.c"
echo 'membrane test page' > "$rootfs/var/www/index.html"
tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/bin/sh"]' -c "LABEL membrane.image.hash=$hash" -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  - "$image" >/dev/null
echo "built $image"
