#!/usr/bin/env bash
# Build strato's guest artifacts: a Linux kernel (vmlinux with a PVH entry
# note, and bzImage), a busybox initramfs, an ext4 root image, and Debian's
# cloud kernel with a busybox initramfs carrying its virtio modules; and
# for aarch64 guests the project kernel built for arm64 (an Image, with
# aarch64-linux-gnu-gcc) and Debian's stock arm64 kernel, with an arm64
# busybox initramfs carrying the stock kernel's virtio modules.
#
#   resources/build.sh [kernel|initramfs|rootfs|cloud|arm64|all]   (default: all)
#
# Progress goes to stderr; stdout gets KEY=PATH lines (VMLINUX, BZIMAGE,
# INITRAMFS, ROOTFS, CLOUD_KERNEL, CLOUD_INITRAMFS; ARM64_IMAGE,
# ARM64_KERNEL, ARM64_INITRAMFS) for the selected targets; `all` is the x86 set. Results are cached under
# ${STRATO_CACHE:-$HOME/.cache/strato}/<target>-<hash>/, where <hash> is a
# sha256 over every input of that target (see resources/README.md). A hit
# prints the paths at once; a build fills a temporary directory that is
# renamed into place only when complete.
set -euo pipefail

RES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$RES_DIR/build.sh"
# The project kernel: one config fragment per architecture.
KCONFIG_X86_64="$RES_DIR/kernel/x86_64.config"
KCONFIG_ARM64="$RES_DIR/kernel/arm64.config"
PATCH_DIR="$RES_DIR/patches"
INIT_SCRIPT="$RES_DIR/initramfs/init"
# The guest end of the vsock tests, built static for this machine's images.
VSOCK_SRC="$RES_DIR/initramfs/vsock.c"
CACHE="${STRATO_CACHE:-$HOME/.cache/strato}"

LINUX_PKG=linux-source-6.1
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX_PKG=busybox-static
BUSYBOX_BIN=/bin/busybox
# Debian's kernel for cloud VMs (a meta package; the kernel is the
# versioned linux-image-<abi>-cloud-amd64 it depends on) and the modules
# its initramfs carries, with their dependencies, for the init to load.
CLOUD_META_PKG=linux-image-cloud-amd64
CLOUD_MODULES=(virtio_mmio virtio_blk virtio_net virtio_console virtio_balloon virtio_mem button evdev ext4)
# Debian's generic arm64 kernel (an uncompressed Image; the same meta
# package scheme) and the arm64 build of the same busybox, both fetched
# with apt-get download, which needs dpkg's arm64 architecture.
ARM64_META_PKG=linux-image-arm64:arm64
ARM64_BUSYBOX_PKG=busybox-static:arm64
# gpio_keys and evdev: the power key on the PL061 GPIO, for busybox acpid.
ARM64_MODULES=(virtio_mmio virtio_blk virtio_net virtio_console gpio_keys evdev ext4)
ROOTFS_SIZE_MIB=64
# Fixed values keep the outputs reproducible.
ROOTFS_UUID=5f2a7c1e-0b6d-4c3e-9a57-57a7a0000001
ROOTFS_HASH_SEED=5f2a7c1e-0b6d-4c3e-9a57-57a7a0000002

log() { echo "[resources] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

APT_UPDATED=0
# ensure_pkgs PKG...: install the Debian packages that are not installed.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages (${missing[*]}); run as root or install them"
        sudo=(sudo -n)
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq >&2
        APT_UPDATED=1
    fi
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

sha() { sha256sum | cut -d' ' -f1; }

# file_sha FILE: sha256 of a big file, memoized by path, size and mtime.
file_sha() {
    local f="$1" memo="$CACHE/.sha256-memo" stamp line
    stamp="$(stat -L -c '%s %Y' "$f")"
    if [ -f "$memo" ]; then
        line="$(grep -F -- " $f $stamp" "$memo" 2>/dev/null | tail -n1 || true)"
        if [ -n "$line" ]; then echo "${line%% *}"; return; fi
    fi
    local h
    h="$(sha256sum "$f" | cut -d' ' -f1)"
    echo "$h $f $stamp" >>"$memo"
    echo "$h"
}

# Remove leftovers of builds whose process is gone (killed hard).
clean_stale() {
    local d pid
    for d in "$CACHE"/.work-* "$CACHE"/.tmp-*; do
        [ -e "$d" ] || continue
        pid="${d##*/}"; pid="${pid#.work-}"; pid="${pid#.tmp-}"; pid="${pid%%-*}"
        if ! kill -0 "$pid" 2>/dev/null; then rm -rf "$d"; fi
    done
}

TO_CLEAN=()
BUILDER_PID=
cleanup() {
    local d
    if [ -n "$BUILDER_PID" ]; then   # interrupted: stop the whole build
        kill -TERM -- "-$BUILDER_PID" 2>/dev/null || true
        wait "$BUILDER_PID" 2>/dev/null || true
    fi
    for d in "${TO_CLEAN[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# with_entry NAME HASH BUILDER ESTIMATE: unless $CACHE/NAME-HASH exists, run
# BUILDER STAGING WORK LOG and rename STAGING to it; sets ENTRY either way.
with_entry() {
    local name="$1" hash="$2" builder="$3" est="$4"
    ENTRY="$CACHE/$name-${hash:0:16}"
    if [ -d "$ENTRY" ]; then
        log "$name: cache hit ($ENTRY)"
        return 0
    fi
    mkdir -p "$CACHE/logs"
    exec 9>"$CACHE/.lock-$name-${hash:0:16}"
    flock 9
    if [ -d "$ENTRY" ]; then   # another build finished it while we waited
        exec 9>&-
        log "$name: cache hit ($ENTRY)"
        return 0
    fi
    local staging work logf start
    staging="$(mktemp -d "$CACHE/.tmp-$$-$name.XXXXXX")"
    work="$(mktemp -d "$CACHE/.work-$$-$name.XXXXXX")"
    TO_CLEAN+=("$staging" "$work")
    logf="$CACHE/logs/$name-${hash:0:16}.log"
    : >"$logf"
    log "building $name (cache miss, ~$est)... log: $logf"
    start=$SECONDS
    # The builder runs in a subshell with errexit in force (it would be
    # ignored in an `if` condition), in its own process group so that an
    # interrupt of this script stops all of it (see cleanup).
    local rc=0
    set +e
    set -m
    ( set -e; "$builder" "$staging" "$work" "$logf" ) </dev/null &
    BUILDER_PID=$!
    set +m
    wait "$BUILDER_PID"
    rc=$?
    BUILDER_PID=
    set -e
    if [ "$rc" -ne 0 ]; then
        log "$name build FAILED (exit $rc); last lines of $logf:"
        tail -n 40 "$logf" >&2
        exit 1
    fi
    cp "$logf" "$staging/build.log"
    echo "$hash" >"$staging/inputs.sha256"
    chmod 755 "$staging"
    mv -T "$staging" "$ENTRY"
    rm -rf "$work"
    exec 9>&-
    rm -f "$CACHE/.lock-$name-${hash:0:16}"
    log "$name: built in $((SECONDS - start)) s -> $ENTRY"
}

# ----------------------------------------------------------------- kernel

KERNEL_PKGS=(make gcc libc6-dev flex bison bc libelf-dev libssl-dev cpio xz-utils lz4 patch binutils "$LINUX_PKG")
ARM64_KERNEL_PKGS=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)

# The kernel being built: K_ARCH (the kernel's ARCH), K_FRAGMENT (its
# config fragment), K_CROSS (the cross compiler's prefix, or empty).
kernel_for() {
    case "$1" in
        x86_64) K_ARCH=x86_64 K_FRAGMENT="$KCONFIG_X86_64" K_CROSS= ;;
        arm64) K_ARCH=arm64 K_FRAGMENT="$KCONFIG_ARM64" K_CROSS=aarch64-linux-gnu- ;;
    esac
}

kernel_hash() {
    {
        echo "strato-kernel-v1"
        echo "arch: $K_ARCH"
        echo "source: $LINUX_PKG $(pkg_version "$LINUX_PKG") $(file_sha "$LINUX_TARBALL")"
        echo "gcc: $("${K_CROSS}gcc" -dumpfullversion 2>/dev/null || "${K_CROSS}gcc" -dumpversion)"
        echo "binutils: $("${K_CROSS}ld" --version | head -n1)"
        echo "config:"; cat "$K_FRAGMENT"
        local p
        for p in "$PATCH_DIR"/*.patch; do
            [ -e "$p" ] || continue
            echo "patch: ${p##*/}"; cat "$p"
        done
        echo "script:"; cat "$SELF"
    } | sha
}

build_kernel() {
    local out="$1" work="$2" logf="$3" src="$2/linux" p
    mkdir -p "$src"
    echo "== extract $LINUX_TARBALL" >>"$logf"
    tar -xf "$LINUX_TARBALL" -C "$src" --strip-components=1 >>"$logf" 2>&1
    for p in "$PATCH_DIR"/*.patch; do
        [ -e "$p" ] || continue
        echo "== patch ${p##*/}" >>"$logf"
        patch -d "$src" -p1 --forward --batch <"$p" >>"$logf" 2>&1
    done
    # Reproducible banner: no host user/name/time in the image.
    export KBUILD_BUILD_USER=strato KBUILD_BUILD_HOST=strato KBUILD_BUILD_VERSION=1
    KBUILD_BUILD_TIMESTAMP="$(LC_ALL=C date -u -d "@$(stat -c %Y "$LINUX_TARBALL")")"
    export KBUILD_BUILD_TIMESTAMP
    local mk=(make -C "$src" ARCH="$K_ARCH" -j"$(nproc)")
    [ -z "$K_CROSS" ] || mk+=(CROSS_COMPILE="$K_CROSS")
    echo "== tinyconfig + fragment + olddefconfig" >>"$logf"
    {
        "${mk[@]}" tinyconfig &&
        (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$K_FRAGMENT") &&
        "${mk[@]}" olddefconfig
    } >>"$logf" 2>&1
    # Every option of the fragment must have survived olddefconfig.
    local bad=0 line opt
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                grep -qxF -- "$line" "$src/.config" || { echo "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo unset)" >>"$logf"; bad=1; } ;;
            "# CONFIG_"*" is not set")
                opt="${line#\# }"; opt="${opt%% *}"
                if grep -q "^$opt=" "$src/.config"; then echo "config: wanted $opt off, got: $(grep "^$opt=" "$src/.config")" >>"$logf"; bad=1; fi ;;
        esac
    done <"$K_FRAGMENT"
    if [ "$bad" -ne 0 ]; then echo "config fragment not applied cleanly" >>"$logf"; return 1; fi
    if [ "$K_ARCH" = arm64 ]; then
        # The uncompressed Image, which strato loads (and its header says
        # where); no PVH on arm64.
        echo "== make Image" >>"$logf"
        "${mk[@]}" Image >>"$logf" 2>&1
        cp "$src/arch/arm64/boot/Image" "$out/Image"
        cp "$src/.config" "$out/config"
        cp "$src/System.map" "$out/System.map"
        echo "== done" >>"$logf"
        return 0
    fi
    echo "== make vmlinux bzImage" >>"$logf"
    "${mk[@]}" vmlinux bzImage >>"$logf" 2>&1
    # PVH entry: XEN_ELFNOTE_PHYS32_ENTRY (type 18 = 0x12) must be present.
    if ! readelf -n "$src/vmlinux" | grep -Eq "Xen.*(0x00000012|PHYS32_ENTRY)"; then
        echo "vmlinux lacks the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)" >>"$logf"
        return 1
    fi
    cp "$src/vmlinux" "$out/vmlinux"
    cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
    cp "$src/.config" "$out/config"
    cp "$src/System.map" "$out/System.map"
    echo "== done" >>"$logf"
}

# -------------------------------------------------------------- user space

USER_PKGS=("$BUSYBOX_PKG" cpio e2fsprogs)

userspace_inputs() {
    echo "busybox: $BUSYBOX_PKG $(pkg_version "$BUSYBOX_PKG") $(sha256sum "$BUSYBOX_BIN" | cut -d' ' -f1)"
    echo "init:"; cat "$INIT_SCRIPT"
    echo "vsock:"; cat "$VSOCK_SRC"; echo "gcc: $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"
    echo "script:"; cat "$SELF"
}

# populate_tree DIR [BUSYBOX]: busybox (this machine's, or the BUSYBOX
# binary of another architecture) with all applet links plus our init. The
# applet list comes from this machine's busybox, which runs here: the
# arm64 one is the same Debian version, so the same applets.
populate_tree() {
    local d="$1" bb="${2:-$BUSYBOX_BIN}" a
    mkdir -p "$d"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,root,etc}
    cp "$bb" "$d/bin/busybox"
    chmod 755 "$d/bin/busybox"
    for a in $("$BUSYBOX_BIN" --list-full); do
        [ -e "$d/$a" ] || [ -L "$d/$a" ] || ln -s /bin/busybox "$d/$a"
    done
    # Only in this machine's images: the program is built for it.
    if [ -z "${2:-}" ]; then
        gcc -static -O2 -o "$d/bin/strato-vsock" "$VSOCK_SRC"
    fi
    rm -f "$d/init" "$d/sbin/init"
    install -m 755 "$INIT_SCRIPT" "$d/init"
    install -m 755 "$INIT_SCRIPT" "$d/sbin/init"
    chmod 1777 "$d/tmp"
    chmod 700 "$d/root"
    echo "root:x:0:0:root:/root:/bin/sh" >"$d/etc/passwd"
    echo "root:x:0:" >"$d/etc/group"
    echo "strato" >"$d/etc/hostname"
    # Fixed timestamps for reproducible images.
    find "$d" -exec touch -h -d @0 {} +
}

initramfs_hash() { { echo "strato-initramfs-v1"; userspace_inputs; } | sha; }

build_initramfs() {
    local out="$1" work="$2" logf="$3" tree="$2/tree"
    populate_tree "$tree" >>"$logf" 2>&1
    # Uncompressed newc: unpacking is several times faster than gzip in a
    # software-emulated guest. /dev/console comes from the kernel's built-in
    # default initramfs (usr/default_cpio_list), so no root is needed here.
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out/initramfs.cpio" 2>>"$logf"
    echo "== done" >>"$logf"
}

rootfs_hash() {
    { echo "strato-rootfs-v1"; userspace_inputs
      echo "e2fsprogs: $(pkg_version e2fsprogs)"; echo "size: $ROOTFS_SIZE_MIB"; } | sha
}

build_rootfs() {
    local out="$1" work="$2" logf="$3" tree="$2/tree"
    populate_tree "$tree" >>"$logf" 2>&1
    SOURCE_DATE_EPOCH=0 mkfs.ext4 -F -q -L strato-root \
        -U "$ROOTFS_UUID" -E "hash_seed=$ROOTFS_HASH_SEED,root_owner=0:0" \
        -d "$tree" "$out/rootfs.ext4" "${ROOTFS_SIZE_MIB}M" >>"$logf" 2>&1
    echo "== done" >>"$logf"
}

# ------------------------------------------------- distribution kernels

DISTRO_PKGS=("$BUSYBOX_PKG" cpio kmod xz-utils)

# deb_resolve PKG: sets DEB_PKG (PKG, or the versioned linux-image package
# the meta package PKG depends on), DEB_VER and DEB_SHA (the .deb's sha256
# as the archive's signed index gives it), from the local apt lists;
# updates them once if they do not know the package. apt-cache takes
# about a second, so the answer is memoized by the lists' modification
# time.
deb_resolve() {
    local want="$1" try memo="$CACHE/.deb-resolve-memo" stamp line info
    stamp="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)"
    if [ -f "$memo" ]; then
        line="$(grep -F -- "$want $stamp " "$memo" 2>/dev/null | tail -n1 || true)"
        if [ -n "$line" ]; then
            read -r _ _ DEB_PKG DEB_VER DEB_SHA <<<"$line"
            return 0
        fi
    fi
    for try in 1 2; do
        DEB_PKG="$(apt-cache depends "$want" 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)"
        [ -n "$DEB_PKG" ] || DEB_PKG="$want"
        info="$(apt-cache show --no-all-versions "$DEB_PKG" 2>/dev/null || true)"
        DEB_VER="$(sed -n 's/^Version: //p' <<<"$info" | head -n1)"
        DEB_SHA="$(sed -n 's/^SHA256: //p' <<<"$info" | head -n1)"
        if [ -n "$DEB_VER" ] && [ -n "$DEB_SHA" ]; then
            stamp="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)"
            echo "$want $stamp $DEB_PKG $DEB_VER $DEB_SHA" >>"$memo"
            return 0
        fi
        [ "$try" -eq 1 ] && [ "$APT_UPDATED" -eq 0 ] || break
        log "apt lists do not know $want; apt-get update"
        local sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >&2
        APT_UPDATED=1
    done
    case "$want" in
        *:arm64) die "cannot resolve $want with apt-cache; dpkg needs the arm64 architecture (python3 tests/lane/lane.py --arch aarch64 install)" ;;
    esac
    die "cannot resolve $want to a package with apt-cache"
}

# fetch_deb WORK LOG PKG VER SHA DIR: apt-get download PKG=VER, check its
# sha256, unpack it into DIR.
fetch_deb() {
    local work="$1" logf="$2" pkg="$3" ver="$4" sum="$5" dir="$6" dl deb
    dl="$(mktemp -d "$work/deb.XXXXXX")"
    echo "== apt-get download $pkg=$ver" >>"$logf"
    (cd "$dl" && apt-get download "$pkg=$ver") >>"$logf" 2>&1
    deb="$(echo "$dl"/*.deb)"
    [ -f "$deb" ] || { echo "no .deb downloaded" >>"$logf"; return 1; }
    if [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$sum" ]; then
        echo "sha256 of $deb differs from the archive's $sum" >>"$logf"; return 1
    fi
    echo "== dpkg-deb -x ${deb##*/}" >>"$logf"
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir" >>"$logf" 2>&1
}

# The distribution kernel being built, set by the main part: D_KPKG,
# D_KVER, D_KSHA (the kernel package), D_MODULES (modules to carry),
# D_BBPKG, D_BBVER, D_BBSHA (a busybox package of another architecture, or
# empty for this machine's) and D_KERNEL (the output's file name).
distro_hash() {
    { echo "strato-distro-v1"
      echo "kernel: $D_KPKG $D_KVER $D_KSHA"
      echo "busybox: ${D_BBPKG:-host} ${D_BBVER:-} ${D_BBSHA:-}"
      echo "modules: ${D_MODULES[*]}"
      echo "kmod: $(pkg_version kmod)"
      userspace_inputs; } | sha
}

build_distro() {
    local out="$1" work="$2" logf="$3" pkg="$2/pkg" tree="$2/tree" bb="$BUSYBOX_BIN"
    local kver m deps line rel f
    fetch_deb "$work" "$logf" "$D_KPKG" "$D_KVER" "$D_KSHA" "$pkg"
    if [ -n "$D_BBPKG" ]; then
        fetch_deb "$work" "$logf" "$D_BBPKG" "$D_BBVER" "$D_BBSHA" "$work/bb"
        bb="$work/bb/bin/busybox"
    fi
    kver="$(ls "$pkg/lib/modules")"
    [ -n "$kver" ] && [ "$(echo "$kver" | wc -l)" -eq 1 ] ||
        { echo "expected one lib/modules/<release> in the package, got: $kver" >>"$logf"; return 1; }
    [ -f "$pkg/boot/vmlinuz-$kver" ] || { echo "no boot/vmlinuz-$kver" >>"$logf"; return 1; }
    echo "release: $kver" >>"$logf"
    # The package ships no modules.dep (its postinst runs depmod).
    depmod -b "$pkg" "$kver" >>"$logf" 2>&1

    populate_tree "$tree" "$bb" >>"$logf" 2>&1
    local mdir="$tree/lib/modules/$kver"
    mkdir -p "$mdir"
    cp "$pkg/lib/modules/$kver/modules.builtin" \
        "$pkg/lib/modules/$kver/modules.builtin.modinfo" "$mdir/"
    echo "== modules" >>"$logf"
    for m in "${D_MODULES[@]}"; do
        # insmod lines in load order, or "builtin NAME" for built-in ones;
        # -C /dev/null keeps the host's modprobe.d out.
        deps="$(modprobe -C /dev/null -d "$pkg" -S "$kver" --show-depends "$m" 2>>"$logf")" ||
            { echo "module $m: not in the package" >>"$logf"; return 1; }
        while read -r line; do
            echo "$m: $line" >>"$logf"
            case "$line" in
                "insmod "*) f="${line#insmod }"; f="${f%% *}" ;;
                *) continue ;;
            esac
            rel="${f#"$pkg/lib/modules/$kver/"}"
            mkdir -p "$mdir/$(dirname "$rel")"
            case "$rel" in   # carried as plain .ko files
                *.ko.xz) rel="${rel%.xz}"; [ -e "$mdir/$rel" ] || xz -dc "$f" >"$mdir/$rel" ;;
                *.ko) [ -e "$mdir/$rel" ] || cp "$f" "$mdir/$rel" ;;
                *) echo "unexpected module file $rel" >>"$logf"; return 1 ;;
            esac
            grep -qxF "$rel" "$mdir/modules.order" 2>/dev/null || echo "$rel" >>"$mdir/modules.order"
        done <<<"$deps"
        echo "$m" >>"$mdir/strato-modules"
    done
    # modules.dep and friends for busybox modprobe, over what is carried.
    depmod -b "$tree" "$kver" >>"$logf" 2>&1
    echo "$(find "$mdir" -name '*.ko' | wc -l) module files" >>"$logf"
    find "$tree" -exec touch -h -d @0 {} +
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out/initramfs.cpio" 2>>"$logf"
    cp "$pkg/boot/vmlinuz-$kver" "$out/$D_KERNEL"
    cp "$pkg/boot/config-$kver" "$out/config"
    echo "$kver" >"$out/release"
    echo "== done" >>"$logf"
}

# distro_target NAME META MODULES_ARRAY KERNEL_FILE [BUSYBOX_PKG]: resolve
# and build (or find) one distribution kernel entry.
distro_target() {
    local name="$1" meta="$2" mods="$3[@]" kfile="$4" bbpkg="${5:-}"
    ensure_pkgs "${DISTRO_PKGS[@]}"
    deb_resolve "$meta"
    D_KPKG="$DEB_PKG" D_KVER="$DEB_VER" D_KSHA="$DEB_SHA"
    D_MODULES=("${!mods}") D_KERNEL="$kfile"
    D_BBPKG= D_BBVER= D_BBSHA=
    if [ -n "$bbpkg" ]; then
        deb_resolve "$bbpkg"
        D_BBPKG="$DEB_PKG" D_BBVER="$DEB_VER" D_BBSHA="$DEB_SHA"
    fi
    with_entry "$name" "$(distro_hash)" build_distro "a 30 MB download and seconds"
}

# ------------------------------------------------------------------- main

target="${1:-all}"
case "$target" in
    kernel|initramfs|rootfs|cloud|arm64|all) ;;
    -h|--help) sed -n '2,17p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown target '$target' (kernel|initramfs|rootfs|cloud|arm64|all)" ;;
esac

mkdir -p "$CACHE"
clean_stale
CACHE="$(cd "$CACHE" && pwd)"
results=()

if [ "$target" = kernel ] || [ "$target" = all ]; then
    ensure_pkgs "${KERNEL_PKGS[@]}"
    kernel_for x86_64
    with_entry kernel "$(kernel_hash)" build_kernel "3-5 min on 2 cores"
    results+=("VMLINUX=$ENTRY/vmlinux" "BZIMAGE=$ENTRY/bzImage")
fi
if [ "$target" = initramfs ] || [ "$target" = all ]; then
    ensure_pkgs "${USER_PKGS[@]}"
    with_entry initramfs "$(initramfs_hash)" build_initramfs "seconds"
    results+=("INITRAMFS=$ENTRY/initramfs.cpio")
fi
if [ "$target" = rootfs ] || [ "$target" = all ]; then
    ensure_pkgs "${USER_PKGS[@]}"
    with_entry rootfs "$(rootfs_hash)" build_rootfs "seconds"
    results+=("ROOTFS=$ENTRY/rootfs.ext4")
fi
if [ "$target" = cloud ] || [ "$target" = all ]; then
    distro_target cloud "$CLOUD_META_PKG" CLOUD_MODULES vmlinuz
    results+=("CLOUD_KERNEL=$ENTRY/vmlinuz" "CLOUD_INITRAMFS=$ENTRY/initramfs.cpio")
fi
if [ "$target" = arm64 ]; then
    ensure_pkgs "${KERNEL_PKGS[@]}" "${ARM64_KERNEL_PKGS[@]}"
    kernel_for arm64
    with_entry kernel-arm64 "$(kernel_hash)" build_kernel "5-8 min on 2 cores"
    results+=("ARM64_IMAGE=$ENTRY/Image")
    distro_target arm64 "$ARM64_META_PKG" ARM64_MODULES Image "$ARM64_BUSYBOX_PKG"
    results+=("ARM64_KERNEL=$ENTRY/Image" "ARM64_INITRAMFS=$ENTRY/initramfs.cpio")
fi

printf '%s\n' "${results[@]}"
