#!/usr/bin/env bash
# Builds the aarch64 test guests: tests/guests/aarch64/build.sh OUTDIR
# Produces OUTDIR/<name>.img, an arm64 Image, for each <name>.S here
# (common.S is included, not built). Needs aarch64-linux-gnu-as, -ld and
# -objcopy (Debian: binutils-aarch64-linux-gnu).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
CROSS="${CROSS:-aarch64-linux-gnu-}"
for tool in "${CROSS}gcc" "${CROSS}ld" "${CROSS}objcopy"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build.sh: missing tool: $tool" >&2; exit 1; }
done

mkdir -p "$out"
obj="$(mktemp -d "${TMPDIR:-/tmp}/strato-guests-arm64.XXXXXX")"
trap 'rm -rf "$obj"' EXIT

for s in "$src"/*.S; do
    name="$(basename "$s" .S)"
    [ "$name" = common ] && continue
    # gcc runs the C preprocessor over the .S for the #defines.
    "${CROSS}gcc" -c -nostdlib -ffreestanding -I "$src" -Wa,--fatal-warnings "$s" -o "$obj/$name.o"
    "${CROSS}ld" -static -nostdlib --build-id=none -Ttext=0 -e _start \
        -o "$obj/$name.elf" "$obj/$name.o"
    "${CROSS}objcopy" -O binary "$obj/$name.elf" "$obj/$name.img"
    mv -f "$obj/$name.img" "$out/$name.img"
done
