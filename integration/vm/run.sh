#!/usr/bin/env bash
# Runs a command from this checkout inside a freshly booted Debian 6.1 kernel (qemu, TCG).
#
#   integration/vm/run.sh [--timeout SECONDS] [--mem MB] [--out DIR]... [--env NAME=VALUE]...
#                         [--cwd DIR] [--console] -- COMMAND...
#
# The guest sees the host's whole root read-only (virtiofs) under a tmpfs overlay: it can write
# anywhere, nothing reaches the host, except the --out directories, shared writable at the same
# path. COMMAND runs as root in DIR (default: the current directory) with a clean environment.
# Its stdout+stderr stream to this script's stdout; the exit code is COMMAND's. Exit codes of
# the harness itself: 124 timeout, 125 the guest did not report (boot or init failure; the serial
# console log is printed on stderr), 130/143 interrupted. qemu never outlives this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=900
MEM=2048
CWD=$PWD
CONSOLE=0
OUTS=()
ENVS=()

usage() { sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --mem) MEM=${2:?}; shift 2 ;;
    --out) OUTS+=("$(realpath -m -- "${2:?}")"); shift 2 ;;
    --env) [[ ${2:?} == [A-Za-z_]*=* ]] || usage; ENVS+=("$2"); shift 2 ;;
    --cwd) CWD=$(realpath -- "${2:?}"); shift 2 ;;
    --console) CONSOLE=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown option $1 (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || usage
[[ $TIMEOUT =~ ^[0-9]+$ && $MEM =~ ^[0-9]+$ ]] || usage
for d in "${OUTS[@]}"; do
  [[ $d != / ]] || { echo "run.sh: --out / would make the whole host writable from the guest" >&2; exit 2; }
done
# The guest mounts fresh tmpfs on /tmp and /run: a directory there exists in it only as an --out.
case $CWD in
  /tmp|/tmp/*|/run|/run/*)
    ok=0
    for d in "${OUTS[@]}"; do [[ $CWD == "$d" || $CWD == "$d"/* ]] && ok=1; done
    ((ok)) || { echo "run.sh: $CWD is under /tmp or /run, which the guest replaces with a tmpfs; share it with --out" >&2; exit 2; } ;;
esac
[[ $(id -u) == 0 ]] || { echo "run.sh: must run as root (virtiofsd, mount namespaces)" >&2; exit 2; }

# Kernel, initramfs and tools (quiet when already done).
ENV_FILE=$("$HERE/prepare.sh" -p) || { echo "run.sh: prepare.sh failed" >&2; exit 125; }
VMLINUZ=$(sed -n 's/^VMLINUZ=//p' "$ENV_FILE")
INITRAMFS=$(sed -n 's/^INITRAMFS=//p' "$ENV_FILE")
MODDIR=$(sed -n 's/^MODDIR=//p' "$ENV_FILE")

# Temp dirs of earlier runs that were SIGKILLed (no trap ran): their owner pid is gone.
for old in /tmp/membrane-vm.*/owner; do
  [[ -f $old ]] || continue
  pid=$(cat "$old" 2>/dev/null || true)
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && continue
  d=${old%/owner}
  { [[ ! -d $d/rootmp ]] || rmdir "$d/rootmp" 2>/dev/null; } && rm -rf "$d"
done
TMP=$(mktemp -d /tmp/membrane-vm.XXXXXX)
echo $$ >"$TMP/owner"
PIDS=()       # every background process we start: virtiofsd instances, then timeout(qemu)
QPID=

# shellcheck disable=SC2317  # (invoked by the traps)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  local pid alive
  for pid in ${QPID:+"$QPID"} "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give them 5 s to go (qemu flushes, virtiofsd notices the socket closing), then SIGKILL.
  for _ in $(seq 50); do
    alive=0
    for pid in ${QPID:+"$QPID"} "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in ${QPID:+"$QPID"} "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # timeout(1) runs qemu in its own process group: make sure nothing of that group is left.
  [[ -n $QPID ]] && kill -KILL -- "-$QPID" 2>/dev/null || true
  wait 2>/dev/null || true
  # rootmp is the mount point of the read-only copy of / in virtiofsd's private namespace; on the
  # host it must be an empty directory. Refuse to rm -rf if it is not (never recurse into /).
  if [[ -n ${MEMBRANE_VM_KEEP:-} ]]; then
    echo "run.sh: MEMBRANE_VM_KEEP set: left $TMP (console.log, qemu.log, virtiofsd-*.log)" >&2
  elif [[ -d $TMP/rootmp ]] && ! rmdir "$TMP/rootmp" 2>/dev/null; then
    echo "run.sh: $TMP/rootmp is not empty; left $TMP in place" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# What the guest's init reads from the (read-only) host share: the command, the --out shares,
# where the kernel's modules are.
{
  echo '# written by integration/vm/run.sh'
  for e in "${ENVS[@]}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
  printf 'cd -- %q || exit 125\n' "$CWD"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} >"$TMP/cmd.sh"
: >"$TMP/shares"
echo "$MODDIR" >"$TMP/moddir"

mkdir "$TMP/rootmp"
# setpriv --pdeathsig: should this script be SIGKILLed (no trap runs), its children still go.
setpriv --pdeathsig KILL "$HERE/virtiofsd.sh" ro / "$TMP/root.sock" "$TMP/rootmp" </dev/null >"$TMP/virtiofsd-root.log" 2>&1 &
PIDS+=($!)
fsargs=(-chardev "socket,id=fs0,path=$TMP/root.sock" -device "vhost-user-fs-pci,chardev=fs0,tag=hostroot,queue-size=1024")
i=0
for d in "${OUTS[@]}"; do
  i=$((i + 1))
  mkdir -p "$d"
  setpriv --pdeathsig KILL "$HERE/virtiofsd.sh" rw "$d" "$TMP/out$i.sock" </dev/null >"$TMP/virtiofsd-out$i.log" 2>&1 &
  PIDS+=($!)
  printf 'out%d %s\n' "$i" "$d" >>"$TMP/shares"
  fsargs+=(-chardev "socket,id=fs$i,path=$TMP/out$i.sock" -device "vhost-user-fs-pci,chardev=fs$i,tag=out$i,queue-size=1024")
done
# qemu must find the sockets; wait (bounded) for each virtiofsd to create its own.
for sock in "$TMP/root.sock" $(seq -f "$TMP/out%g.sock" 1 "${#OUTS[@]}"); do
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
  if [[ ! -S $sock ]]; then
    echo "run.sh: virtiofsd did not create $sock:" >&2; cat "$TMP"/virtiofsd-*.log >&2; exit 125
  fi
done

console=(-serial "file:$TMP/console.log")
# --console: the serial console on our stderr (fd 3: qemu's own stderr goes to qemu.log).
((CONSOLE)) && { exec 3>&2; console=(-serial "file:/dev/fd/3"); }
# CPU: qemu64 plus the x86-64-v2 bits node likes. Measured here, -cpu max made the guest's BPF
# verifier (the bulk of the datapath tests' time) 25-40% slower under TCG. MEMBRANE_VM_CPU overrides.
# memfd backend, shared: vhost-user (virtiofsd) maps the guest's memory.
# Output: a virtio-serial port on qemu's stdio (no tty in between: no \r, no kernel messages);
# the exit code: a second port into a file. qemu's stdin is a FIFO that never reaches EOF: on
# EOF the stdio chardev counts as closed, and the guest's writes to the port then block forever.
mkfifo "$TMP/stdin"
exec 4<>"$TMP/stdin"
# timeout(1) bounds qemu even if everything else fails; the two pdeathsigs make qemu go with this
# script even when it is SIGKILLed: timeout gets TERM (and passes it on), qemu gets KILL should
# timeout itself die.
setpriv --pdeathsig TERM timeout -k 10 "$TIMEOUT" setpriv --pdeathsig KILL qemu-system-x86_64 \
  -accel tcg -cpu "${MEMBRANE_VM_CPU:-qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt}" -smp 2 -m "${MEM}M" \
  -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -machine pc,memory-backend=mem \
  -nodefaults -no-user-config -nographic -monitor none "${console[@]}" -no-reboot \
  -kernel "$VMLINUZ" -initrd "$INITRAMFS" \
  -append "console=ttyS0 panic=-1 quiet loglevel=4 membrane.ctl=$TMP ${MEMBRANE_VM_APPEND:-}" \
  "${fsargs[@]}" \
  -device virtio-serial-pci,id=vser \
  -chardev stdio,id=out,signal=off -device virtserialport,bus=vser.0,chardev=out,name=membrane.out \
  -chardev "file,id=rc,path=$TMP/rc" -device virtserialport,bus=vser.0,chardev=rc,name=membrane.rc \
  -device virtio-rng-pci \
  <&4 2>"$TMP/qemu.log" &
QPID=$!
qrc=0
wait "$QPID" || qrc=$?
QPID=

if ((qrc == 124)); then
  echo "run.sh: timed out after ${TIMEOUT}s; qemu killed" >&2
  exit 124
fi
rc=$(tr -dc '0-9' <"$TMP/rc" 2>/dev/null || true)
if [[ -z $rc ]]; then
  echo "run.sh: the guest reported no exit code (qemu exit $qrc). qemu:" >&2
  cat "$TMP/qemu.log" >&2
  echo "--- serial console (last 40 lines) ---" >&2
  # (minus the terminal escapes SeaBIOS writes)
  tail -n 40 "$TMP/console.log" 2>/dev/null | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' >&2 || true
  echo "--- virtiofsd ---" >&2
  cat "$TMP"/virtiofsd-*.log >&2
  exit 125
fi
exit "$rc"
