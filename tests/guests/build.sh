#!/usr/bin/env bash
# Builds every strato test guest: tests/guests/build.sh OUTDIR
# Produces OUTDIR/<name>.elf for each <name>.S here, plus bootinfo-64.elf
# (bootinfo without the PVH note, so the Linux 64-bit entry is used).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
CC="${CC:-gcc}"
LD="${LD:-ld}"

for tool in "$CC" "$LD" as; do
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

link() { # link NAME COMMON_OBJ GUEST_OBJ
    "$LD" "${LDFLAGS[@]}" -o "$obj/$1.elf" "$2" "$3"
    mv -f "$obj/$1.elf" "$out/$1.elf"
}

for s in "$src"/*.S; do
    name="$(basename "$s" .S)"
    [ "$name" = common ] && continue
    "$CC" "${ASFLAGS[@]}" "$s" -o "$obj/$name.o"
    link "$name" "$obj/common.o" "$obj/$name.o"
done
link bootinfo-64 "$obj/common-nopvh.o" "$obj/bootinfo.o"
