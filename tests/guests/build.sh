#!/usr/bin/env bash
# Builds every strato test guest: tests/guests/build.sh OUTDIR
# Produces OUTDIR/<name>.elf for each <name>.S and <name>.c here (the C
# guests also link the C runtime lib.c and the virtio driver virtio.c), plus
# bootinfo-64.elf (bootinfo without the PVH note, so the Linux 64-bit entry
# is used).  The C objects are checked for instructions this KVM cannot run
# (SSE/FPU, int3, popcnt, ...).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
CC="${CC:-gcc}"
LD="${LD:-ld}"

for tool in "$CC" "$LD" as objdump; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build.sh: missing tool: $tool" >&2; exit 1; }
done

mkdir -p "$out"
obj="$(mktemp -d "${TMPDIR:-/tmp}/strato-guests.XXXXXX")"
trap 'rm -rf "$obj"' EXIT

ASFLAGS=(-c -m64 -nostdlib -ffreestanding -I "$src" -Wa,--fatal-warnings)
LDFLAGS=(-m elf_x86_64 -static -nostdlib --build-id=none -z noexecstack
         -z max-page-size=4096 -T "$src/guest.ld")

"$CC" "${ASFLAGS[@]}" "$src/common.S" -o "$obj/common.o"
"$CC" "${ASFLAGS[@]}" -DNO_PVH "$src/common.S" -o "$obj/common-nopvh.o"

# C: no SSE/FPU (-mgeneral-regs-only), no red zone (no IDT, but keep it
# kernel-like), no PIC (linked at 1 MiB), no CET endbr64 padding.
CFLAGS=(-c -m64 -O2 -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter
        -ffreestanding -nostdlib -fno-pic -fno-pie -fno-stack-protector
        -mno-red-zone -mgeneral-regs-only -mcmodel=small -fcf-protection=none
        -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-common
        -I "$src")
# C files that are libraries, not guests.
CLIBS=(lib virtio)

link() { # link NAME OBJ...
    local name="$1"; shift
    "$LD" "${LDFLAGS[@]}" -o "$obj/$name.elf" "$@"
    mv -f "$obj/$name.elf" "$out/$name.elf"
}

# Instructions kvm_pvm cannot run, or signs that SSE/FPU code slipped in:
# any x87 mnemonic (f...), xsave/xrstor, MXCSR, int3, popcnt, cmpxchg16b,
# or an %mm/%xmm/%ymm/%zmm/%st operand.
check_insns() { # check_insns OBJ
    local bad
    bad="$(objdump -d --no-show-raw-insn "$1" | awk -F'\t' '
        NF >= 2 {
            split($2, w, " ")
            m = (w[1] == "lock" || w[1] ~ /^rep/) ? w[2] : w[1]
            if (m ~ /^(f|int3|popcnt|xsave|xrstor|ldmxcsr|stmxcsr|emms|cmpxchg16b)/ ||
                $2 ~ /%([xyz]?mm[0-9]|st)/)
                print
        }')"
    if [ -n "$bad" ]; then
        echo "build.sh: $1 contains instructions this KVM cannot run:" >&2
        echo "$bad" >&2
        exit 1
    fi
}

for s in "$src"/*.S; do
    name="$(basename "$s" .S)"
    [ "$name" = common ] && continue
    "$CC" "${ASFLAGS[@]}" "$s" -o "$obj/$name.o"
    link "$name" "$obj/common.o" "$obj/$name.o"
done
link bootinfo-64 "$obj/common-nopvh.o" "$obj/bootinfo.o"

libobjs=()
for l in "${CLIBS[@]}"; do
    "$CC" "${CFLAGS[@]}" "$src/$l.c" -o "$obj/$l.o"
    check_insns "$obj/$l.o"
    libobjs+=("$obj/$l.o")
done
for c in "$src"/*.c; do
    name="$(basename "$c" .c)"
    [[ " ${CLIBS[*]} " == *" $name "* ]] && continue
    "$CC" "${CFLAGS[@]}" "$c" -o "$obj/$name.o"
    check_insns "$obj/$name.o"
    link "$name" "$obj/common.o" "$obj/$name.o" "${libobjs[@]}"
done
