#!/usr/bin/env bash
# Builds the local test image `membrane-test:latest` without a registry: a busybox-static rootfs
# (ping, nc, nslookup, ip, wget, httpd) imported with `docker import`. Idempotent: skips the build
# when the image exists and this script has not changed since (label membrane.image.hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${MEMBRANE_TEST_IMAGE:-membrane-test:latest}
hash=$(sha256sum "$0" | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "membrane.image.hash"}}' "$image" 2>/dev/null || true)" = "$hash" ]; then
  exit 0
fi
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || busybox=/bin/busybox
[ -x /bin/busybox ] || { echo "busybox-static is missing: apt-get install busybox-static" >&2; exit 1; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,proc,sys,dev,root,var/www}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf /bin/busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
echo 'root:x:0:' > "$rootfs/etc/group"
echo 'membrane test page' > "$rootfs/var/www/index.html"
tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/bin/sh"]' -c "LABEL membrane.image.hash=$hash" -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  - "$image" >/dev/null
echo "built $image"
