# Sourced by the image scripts: make_busybox_rootfs DIR fills DIR with a busybox-static root
# filesystem (every applet linked, /tmp sticky, root user), ready for `docker import`.
make_busybox_rootfs() {
  local rootfs=$1
  [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
    { echo "busybox-static is missing: apt-get install busybox-static" >&2; return 1; }
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,proc,sys,dev,root}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf /bin/busybox "$rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
  echo 'root:x:0:' > "$rootfs/etc/group"
}
