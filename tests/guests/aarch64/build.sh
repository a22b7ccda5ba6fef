#!/usr/bin/env bash
# Builds the aarch64 test guests: tests/guests/aarch64/build.sh OUTDIR
# Produces OUTDIR/<name>.img, an arm64 Image, for each <name>.S here
# (common.S is included, not built; crt.S starts the C guests), for the
# C guests of the parent directory that run on both architectures, and for
# the arm64-only C guests here (their runtime: crt.S and rt.c with ../lib.c
# and ../virtio.c). Needs
# aarch64-linux-gnu-gcc, -ld and -objcopy (Debian: gcc-aarch64-linux-gnu).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
csrc="$(dirname "$src")"
out="$1"
CROSS="${CROSS:-aarch64-linux-gnu-}"
for tool in "${CROSS}gcc" "${CROSS}ld" "${CROSS}objcopy"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build.sh: missing tool: $tool" >&2; exit 1; }
done

mkdir -p "$out"
obj="$(mktemp -d "${TMPDIR:-/tmp}/strato-guests-arm64.XXXXXX")"
trap 'rm -rf "$obj"' EXIT

ASFLAGS=(-c -nostdlib -ffreestanding -I "$src" -Wa,--fatal-warnings)
image() { # image NAME: the ELF $obj/NAME.elf as the raw Image OUTDIR/NAME.img
    "${CROSS}objcopy" -O binary "$obj/$1.elf" "$obj/$1.img"
    mv -f "$obj/$1.img" "$out/$1.img"
}

for s in "$src"/*.S; do
    name="$(basename "$s" .S)"
    [ "$name" = common ] || [ "$name" = crt ] && continue
    # gcc runs the C preprocessor over the .S for the #defines.
    "${CROSS}gcc" "${ASFLAGS[@]}" "$s" -o "$obj/$name.o"
    "${CROSS}ld" -static -nostdlib --build-id=none -Ttext=0 -e _start \
        -o "$obj/$name.elf" "$obj/$name.o"
    image "$name"
done

# The C guests that have no x86 instructions in them (acpi, cpuid, kbd,
# net-bench and ticker talk to x86 ports or use x86 instructions). No FP/SIMD registers
# (the guest never enables them); -fno-tree-loop-distribute-patterns keeps
# lib.c's memset and memcpy loops from becoming calls to themselves.
C_GUESTS=(console blk-check blk-copy net hostile rng many)
CFLAGS=(-c -O2 -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter
        -ffreestanding -nostdlib -fno-pic -fno-pie -fno-stack-protector
        -mgeneral-regs-only -mstrict-align -fno-tree-loop-distribute-patterns
        -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-common
        -I "$csrc")
LDFLAGS=(-static -nostdlib --build-id=none -z noexecstack -z max-page-size=4096 --no-warn-rwx-segments
         -T "$src/guest.ld")
"${CROSS}gcc" "${ASFLAGS[@]}" "$src/crt.S" -o "$obj/crt.o"
"${CROSS}gcc" "${CFLAGS[@]}" "$src/rt.c" -o "$obj/rt.o"
for l in lib virtio; do
    "${CROSS}gcc" "${CFLAGS[@]}" "$csrc/$l.c" -o "$obj/$l.o"
done
# And the C guests of this directory (rt.c is the runtime), arm64 only.
for c in "$src"/*.c; do
    name="$(basename "$c" .c)"
    [ "$name" = rt ] || C_GUESTS+=("$name")
done
for name in "${C_GUESTS[@]}"; do
    c="$csrc/$name.c"
    [ -e "$src/$name.c" ] && c="$src/$name.c"
    "${CROSS}gcc" "${CFLAGS[@]}" "$c" -o "$obj/$name.o"
    "${CROSS}ld" "${LDFLAGS[@]}" -o "$obj/$name.elf" \
        "$obj/crt.o" "$obj/rt.o" "$obj/lib.o" "$obj/virtio.o" "$obj/$name.o"
    image "$name"
done
