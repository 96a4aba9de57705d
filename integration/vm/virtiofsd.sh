#!/usr/bin/env bash
# Starts one virtiofsd (the C one of qemu-system-common 7.2) for run.sh.
#   virtiofsd.sh rw SOURCE SOCKET            share SOURCE writable
#   virtiofsd.sh ro SOURCE SOCKET MOUNTPOINT share SOURCE and every mount under it read-only
# This virtiofsd has no read-only option, so "ro" enforces it on the host side: in a private mount
# namespace (nothing here is seen by the host), SOURCE is rbind-mounted on MOUNTPOINT (an empty
# directory), the mounts on the host's /proc, /sys, /dev and /run are dropped from that copy (the
# guest mounts its own; this keeps it away from e.g. the host's /sys/fs/bpf), every remaining mount
# is remounted read-only, that is checked, and virtiofsd is exec'd (same pid: run.sh can kill it) chrooted into
# it. The guest mounts it read-only as well, but that is the guest's to undo; this is not.
set -euo pipefail
mode=$1 source=$2 socket=$3
opts=(-o cache=always -o sandbox=chroot -o log_level=warn -o no_posix_lock -o no_flock --socket-path="$socket")

if [[ $mode == rw ]]; then
  exec /usr/lib/qemu/virtiofsd "${opts[@]}" -o source="$source"
fi
[[ $mode == ro ]] || { echo "virtiofsd.sh: mode must be ro or rw" >&2; exit 2; }
mp=$4
if [[ ${MEMBRANE_VM_IN_NS:-} != 1 ]]; then
  MEMBRANE_VM_IN_NS=1 exec unshare --mount --propagation private -- "$0" "$@"
fi

# Paranoia: everything below must happen in a mount namespace of our own, never the host's.
[[ $(readlink /proc/self/ns/mnt) != "$(readlink /proc/1/ns/mnt)" ]] || { echo "virtiofsd.sh: not in a private mount namespace" >&2; exit 1; }
mount --rbind "$source" "$mp"
unescape() { sed 's/\\040/ /g; s/\\011/\t/g; s/\\012/\n/g; s/\\134/\\/g'; }
mounts_under() {  # mount points at or under $mp, deepest first
  awk '{ print $5 }' /proc/self/mountinfo | unescape | awk -v p="$mp" '$0 == p || index($0, p "/") == 1' | sort -ru
}
while IFS= read -r m; do
  case ${m#"$mp"} in
    # The guest mounts its own proc, sysfs, devtmpfs and a tmpfs on /run: drop the host's (and
    # whatever is mounted below them, e.g. /sys/fs/bpf, /run/netns) from the copy.
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/run|/run/*) umount -l "$m" ;;
    # Anything that cannot be made read-only is not shared at all.
    *) mount -o remount,bind,ro "$m" 2>/dev/null || { echo "virtiofsd.sh: cannot make $m read-only: not shared" >&2; umount -l "$m"; } ;;
  esac
done < <(mounts_under)
# Verify: the per-mount options (field 6) of every mount in the copy must start with "ro".
if awk -v p="$mp" '($5 == p || index($5, p "/") == 1) && $6 !~ /^ro(,|$)/ { bad = 1; print "virtiofsd.sh: still writable: " $5 > "/dev/stderr" } END { exit bad }' /proc/self/mountinfo; then
  exec /usr/lib/qemu/virtiofsd "${opts[@]}" -o source="$mp"
fi
exit 1
