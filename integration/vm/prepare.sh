#!/usr/bin/env bash
# Prepares what integration/vm/run.sh boots: qemu and its helpers from apt, Debian's 6.1 cloud kernel
# unpacked into a cache directory (never installed into the host's /boot), and a busybox initramfs
# carrying the few modules the guest needs before it can reach the host's files.
# Idempotent and silent when everything is already there; prints the cache's env file path with -p.
#
# Why virtiofs and not 9p: Debian's cloud kernel is built without 9p (CONFIG_NET_9P is not set), but
# it has fuse + virtiofs as modules, and bookworm's qemu-system-common ships the C virtiofsd.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MEMBRANE_VM_CACHE:-/var/cache/membrane-vm}
# Kernel flavour: the cloud kernel boots fastest under TCG (few built-in drivers to probe).
FLAVOUR=${MEMBRANE_VM_FLAVOUR:-cloud-amd64}
# Modules put into the initramfs (with their modules.dep dependencies) and loaded at boot, in order:
# virtio transport, the host-share filesystem and overlay (needed before the root exists), the
# output/rc ports and the RNG, then network pieces the project's tests use. Everything else in the
# kernel package stays reachable in the guest through modprobe (its /lib/modules is bind-mounted).
MODULES=(virtio_pci virtiofs overlay virtio_console virtio_rng veth ipvlan sch_ingress cls_bpf)
PACKAGES=(qemu-system-x86 busybox-static)

die() { echo "prepare: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (apt, the cache in $CACHE)"
mkdir -p "$CACHE"
# One prepare at a time (two run.sh started together would otherwise both unpack/build).
exec 9>"$CACHE/.lock"
flock -w 600 9 || die "timed out waiting for $CACHE/.lock"

apt_updated=0
apt_update_once() {
  if [[ $apt_updated == 0 ]]; then
    timeout 300 apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
}

# --- packages: install only what is missing (dpkg-query is fast; apt is not) ---
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "prepare: installing ${missing[*]}" >&2
  apt_update_once
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
[[ -x /usr/lib/qemu/virtiofsd ]] || die "/usr/lib/qemu/virtiofsd missing (it comes with qemu-system-common 7.2)"

# --- kernel: resolve the current ABI (6.1.0-NN) from the meta package ---
resolve_kver() {
  # awk reads all its input (no head/sed q): with pipefail an early exit would SIGPIPE apt-cache.
  apt-cache depends "linux-image-$FLAVOUR" 2>/dev/null \
    | awk -v f="$FLAVOUR" '$1 == "Depends:" && $2 ~ "^linux-image-6\\.1\\.0-[0-9]+-" f "$" && !k { k = substr($2, 13) } END { print k }'
}
KVER=$(resolve_kver)
if [[ -z $KVER ]]; then apt_update_once; KVER=$(resolve_kver); fi
if [[ -z $KVER ]]; then
  # Offline and no lists: fall back to whatever kernel is already cached.
  KVER=$(sed -n 's/^KVER=//p' "$CACHE/current.env" 2>/dev/null || true)
  [[ -n $KVER ]] || die "cannot resolve linux-image-$FLAVOUR's kernel (apt-cache depends gave nothing)"
fi
KDIR=$CACHE/kernel-$KVER
MODDIR=$KDIR/lib/modules/$KVER

if [[ ! -f $KDIR/.complete ]]; then
  echo "prepare: fetching linux-image-$KVER (apt-get download + dpkg-deb -x into $KDIR)" >&2
  rm -rf "$KDIR" "$KDIR.tmp"
  dl=$(mktemp -d "$CACHE/dl.XXXXXX")
  trap 'rm -rf "$dl" "$KDIR.tmp"' EXIT
  # apt's sandbox user must be able to write the download directory (else apt warns).
  chown _apt "$dl" 2>/dev/null || true
  (cd "$dl" && timeout 600 apt-get download -qq "linux-image-$KVER" >/dev/null) || {
    apt_update_once
    (cd "$dl" && timeout 600 apt-get download -qq "linux-image-$KVER" >/dev/null) || die "apt-get download linux-image-$KVER failed"
  }
  mkdir -p "$KDIR.tmp"
  dpkg-deb -x "$dl"/linux-image-"$KVER"_*.deb "$KDIR.tmp"
  # The .deb ships no modules.dep (its postinst runs depmod): generate it with busybox's depmod.
  busybox depmod -b "$KDIR.tmp" "$KVER"
  touch "$KDIR.tmp/.complete"
  mv "$KDIR.tmp" "$KDIR"
  rm -rf "$dl"
  trap - EXIT
fi
VMLINUZ=$KDIR/boot/vmlinuz-$KVER

# --- initramfs: rebuilt when the kernel, the module list, the guest init or busybox change ---
INITRAMFS=$CACHE/initramfs-$KVER.cpio.gz
stamp=$( { echo "$KVER ${MODULES[*]}"; cat "$HERE/guest-init.sh" "$HERE/prepare.sh"; busybox --help 2>&1 | sed -n 1p; } | sha256sum | cut -c1-16)
if [[ ! -f $INITRAMFS || $(cat "$INITRAMFS.stamp" 2>/dev/null) != "$stamp" ]]; then
  echo "prepare: building $INITRAMFS" >&2
  root=$(mktemp -d "$CACHE/initramfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,dev,proc,sys,run,newroot,lib/modules/"$KVER"}
  cp /bin/busybox "$root/bin/busybox"
  # modules.dep lines: "kernel/x/y.ko: kernel/dep1.ko kernel/dep2.ko"; names use _ for -.
  declare -A want=()
  add_module() {
    local name=$1 line path dep
    line=$(awk -v n="$name" -F: '{ f=$1; sub(/.*\//, "", f); sub(/\.ko$/, "", f); gsub(/-/, "_", f); if (f == n) { print; exit } }' "$MODDIR/modules.dep")
    if [[ -z $line ]]; then
      grep -q "/${name//_/[_-]}\.ko$" "$MODDIR/modules.builtin" && return 0   # built in: nothing to load
      die "module $name is neither in modules.dep nor in modules.builtin of $KVER"
    fi
    path=${line%%:*}
    [[ -n ${want[$path]:-} ]] && return 0
    want[$path]=1
    for dep in ${line#*:}; do
      dep=${dep##*/}; dep=${dep%.ko}; add_module "${dep//-/_}"
    done
  }
  for m in "${MODULES[@]}"; do add_module "$m"; done
  for path in "${!want[@]}"; do
    mkdir -p "$root/lib/modules/$KVER/$(dirname "$path")"
    cp "$MODDIR/$path" "$root/lib/modules/$KVER/$path"
  done
  # busybox modprobe resolves dependencies from these (entries for absent modules are harmless).
  cp "$MODDIR"/modules.{dep,alias,builtin,order,symbols} "$root/lib/modules/$KVER/"
  printf '%s\n' "${MODULES[@]}" >"$root/modules.load"
  cp "$HERE/guest-init.sh" "$root/init"
  chmod 755 "$root/init"
  (cd "$root" && find . -mindepth 1 | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$INITRAMFS.tmp"
  mv "$INITRAMFS.tmp" "$INITRAMFS"
  echo "$stamp" >"$INITRAMFS.stamp"
  rm -rf "$root"
  trap - EXIT
fi

# What run.sh reads. Written only when it changes, so a finished prepare touches nothing.
env_text="KVER=$KVER
VMLINUZ=$VMLINUZ
INITRAMFS=$INITRAMFS
MODDIR=$MODDIR"
if [[ $(cat "$CACHE/current.env" 2>/dev/null) != "$env_text" ]]; then
  echo "$env_text" >"$CACHE/current.env.tmp" && mv "$CACHE/current.env.tmp" "$CACHE/current.env"
fi
[[ ${1:-} == -p ]] && echo "$CACHE/current.env"
exit 0
