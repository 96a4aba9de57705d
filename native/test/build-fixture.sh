#!/usr/bin/env bash
# Compiles the BPF test fixtures (native/test/*.bpf.c) to native/build/test/*.o when missing or
# older than their source. Run by plugin/kernel/bpf-native.test.ts; needs clang and libbpf-dev.
# The output lives under native/build/ (git-ignored; `node-gyp rebuild` wipes it, and the next
# test run compiles again).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../build/test"
mkdir -p "$out"
# clang -target bpf does not search the multiarch include directory where <asm/types.h> lives.
multiarch=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
for src in "$here"/*.bpf.c; do
  obj="$out/$(basename "$src" .c).o"
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ]; then
    # Through a temporary name, so a concurrent run never sees a half-written object.
    clang -O2 -g -target bpf -I"/usr/include/$multiarch" -Wall -c "$src" -o "$obj.tmp.$$"
    mv -f "$obj.tmp.$$" "$obj"
  fi
done
