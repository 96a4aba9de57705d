#!/bin/busybox sh
# PID 1 of the guest (busybox sh; /init in the initramfs that prepare.sh builds).
# Stage 1 (initramfs): load modules, mount the host's root read-only (virtiofs, tag "hostroot"),
# put a tmpfs-backed overlay over it so that nothing the guest writes reaches the host, mount the
# pseudo filesystems, then switch_root into it (switch_root rather than chroot: with a real root,
# the kernel's modprobe helper, pivot_root and mount namespaces behave as on a normal system).
# Stage 2 (the new root): print the kernel and uptime, run /run/membrane-vm/cmd.sh (written by
# run.sh) with its output on the virtio port "membrane.out", its exit code on "membrane.rc",
# then power off. run.sh reads the exit code from the host side of membrane.rc.
# Messages of this script itself go to the serial console, which run.sh keeps in a log file.

STATE=/run/membrane-vm      # in the new root (on its /run tmpfs)

fail() {
  echo "membrane-vm init: $*" >/dev/console
  [ -n "$OUT" ] && echo "membrane-vm init: $*" >"$OUT"
  sync
  /bin/busybox poweroff -f
  echo o >/proc/sysrq-trigger
  exit 1
}

find_port() {  # prints /dev/vportNpM of the virtio-serial port with the given name
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}

if [ "$1" = stage2 ]; then
  # membrane.debug on the kernel command line (MEMBRANE_VM_APPEND=membrane.debug) traces this.
  /run/membrane-vm/bin/busybox grep -q membrane.debug /proc/cmdline && set -x
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$STATE/bin
  B=$STATE/bin/busybox
  OUT=$($B cat $STATE/out.dev)
  RC=$($B cat $STATE/rc.dev)
  {
    echo "[membrane-vm] uname -r: $($B uname -r)"
    echo "[membrane-vm] /proc/uptime: $($B cat /proc/uptime)"
  } >"$OUT"
  # A clean environment like a login shell's; cmd.sh adds the caller's --env and cds.
  $B env -i PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$STATE/bin" \
    HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 MEMBRANE_VM=1 \
    /bin/bash $STATE/cmd.sh </dev/null >"$OUT" 2>&1
  rc=$?
  echo "$rc" >"$RC"
  # Flush writable host shares (--out) before the power goes.
  $B sync
  while read -r tag path; do $B umount "$path" 2>/dev/null || $B umount -l "$path"; done <$STATE/shares
  $B poweroff -f
  echo o >/proc/sysrq-trigger
  exit "$rc"
fi

# ---------------- stage 1 ----------------
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
grep -q membrane.debug /proc/cmdline && set -x
KVER=$(uname -r)
while read -r m; do
  modprobe "$m" || fail "modprobe $m failed"
done </modules.load

# The ports appear once virtio_console has probed; wait a little (bounded) for them.
i=0
until OUT=$(find_port membrane.out) && RC=$(find_port membrane.rc) && [ -e "$OUT" ] && [ -e "$RC" ]; do
  i=$((i + 1)); [ $i -gt 100 ] && fail "virtio ports membrane.out/membrane.rc not found"
  sleep 0.05
done

CTL=$(sed -n 's/.*membrane\.ctl=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$CTL" ] || fail "no membrane.ctl= on the kernel command line"

mkdir -p /lower /rw /newroot
mount -t virtiofs -o ro hostroot /lower || fail "mount virtiofs hostroot failed"
[ -f "/lower$CTL/cmd.sh" ] || fail "/lower$CTL/cmd.sh not found: is the host share right?"
mount -t tmpfs -o mode=755 upper /rw || fail "tmpfs for the overlay failed"
mkdir -p /rw/upper /rw/work
# index/xino/metacopy off: the lower is a network-like fs (FUSE) whose inode numbers can repeat
# across host mounts, so overlay must not rely on file handles or inode numbers of the lower.
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work,index=off,xino=off,metacopy=off,redirect_dir=off /newroot \
  || fail "overlay over virtiofs failed"

N=/newroot
mkdir -p $N/proc $N/sys $N/dev $N/tmp $N/run $N/root
mount -t proc proc $N/proc
mount -t sysfs sysfs $N/sys
mount -t devtmpfs devtmpfs $N/dev
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $N/dev/pts
mount -t tmpfs -o mode=1777 shm $N/dev/shm
mount -t tmpfs -o mode=1777 tmp $N/tmp
mount -t tmpfs -o mode=755 run $N/run
mount -t bpf bpf $N/sys/fs/bpf || fail "bpffs mount failed"
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup || fail "cgroup2 mount failed"
mount -t debugfs debugfs $N/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $N/sys/kernel/tracing 2>/dev/null

mkdir -p $N$STATE/bin
cp /bin/busybox $N$STATE/bin/busybox
for a in modprobe insmod rmmod lsmod modinfo depmod; do ln -s busybox $N$STATE/bin/$a; done
cp /init $N$STATE/init
cp "/lower$CTL/cmd.sh" $N$STATE/cmd.sh
cp "/lower$CTL/shares" $N$STATE/shares
echo "$OUT" >$N$STATE/out.dev
echo "$RC" >$N$STATE/rc.dev

# The whole module tree of the kernel package (from the host's cache) at the usual place, and the
# kernel's module-autoload helper pointed at busybox modprobe (the host may have no kmod).
MODDIR=$(cat "/lower$CTL/moddir")
mkdir -p "$N/lib/modules/$KVER"
mount --bind "$N$MODDIR" "$N/lib/modules/$KVER" || fail "bind $MODDIR failed"
echo $STATE/bin/modprobe >/proc/sys/kernel/modprobe

# Writable host directories (--out), each a virtiofs share mounted at its host path.
while read -r tag path; do
  { mkdir -p "$N$path" && mount -t virtiofs "$tag" "$N$path"; } || fail "mount of --out $path failed"
done <$N$STATE/shares

hostname membrane-vm
ip link set lo up
umount /lower 2>/dev/null || umount -l /lower
exec switch_root $N $STATE/bin/busybox sh $STATE/init stage2
