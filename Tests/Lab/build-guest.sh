#!/bin/bash
# Build the swapfair lab guest that run-guest.sh boots: a Debian kernel and a small
# initramfs (static busybox, a few kernel modules, guest-init.sh as /init).
#
#   build-guest.sh              fetch and build what is missing; always rebuild initramfs and memhog
#   build-guest.sh --if-needed  the same, but return at once when the guest is up to date
#                               (run-guest.sh calls this before every boot)
#
# Everything lands in $SWAPFAIR_LAB_DIR (default ~/.cache/swapfair-lab), outside the git tree,
# so every clone on the machine shares one guest and nothing of it is ever committed:
#   vmlinux, initramfs.img  what run-guest.sh boots
#   kernel/KV/              uncompressed kernel + the initramfs base (busybox and modules)
#   apt/, debs/             private apt state, the downloaded kernel package
#   bin/memhog              the memory hog check.sh uses
#   runs/                   one control dir per run-guest.sh call
#   stamp                   checksum of the inputs the current guest was built from
#
# Host changes: apt-get installs the Debian packages in HOST_PKGS when missing. The kernel
# package is only downloaded, through a private apt configuration, and unpacked under the lab
# dir: it is never installed, and /etc/apt and /boot are not touched.
#
# Env: LAB_SUITE=bookworm-backports    suite the kernel comes from (its 6.12 has ublk_drv; 6.1 has not)
#      LAB_KERNEL_PKG=linux-image-...  this exact kernel package instead of the suite's newest
#      LAB_ARCHIVE=URL                 Debian mirror (default: the one /etc/apt uses, else deb.debian.org)
#      LAB_EXTRA_MODS="mod ..."        more kernel modules for the initramfs
#      LAB_SKIP_APT=1                  never apt-get install; fail if something is missing
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAB_DIR=${SWAPFAIR_LAB_DIR:-$HOME/.cache/swapfair-lab}
LAB_SUITE=${LAB_SUITE:-bookworm-backports}
HOST_PKGS="qemu-system-x86 busybox-static kmod cpio xz-utils zstd"
# Modules the guest may need; their dependencies come along. Ones that are built into the
# kernel are skipped silently.
MODS="virtio_pci virtio_blk virtio_console 9pnet_virtio 9p overlay zram nbd ublk_drv loop
      null_blk bfq fuse ext4 virtio_balloon ${LAB_EXTRA_MODS:-}"

say() { echo "lab: $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

mode=${1:-}
case "$mode" in ""|--if-needed) ;; *) echo "usage: $0 [--if-needed]" >&2; exit 2 ;; esac

# The guest depends on these inputs; any change to them rebuilds the initramfs and memhog.
inputs_sum() {
    { cat "$HERE/guest-init.sh" "$HERE/build-guest.sh" "$HERE/memhog.c"
      echo "suite=$LAB_SUITE pkg=${LAB_KERNEL_PKG:-} mods=$MODS"; } | sha256sum | cut -d' ' -f1
}
up_to_date() {
    [ -s "$LAB_DIR/vmlinux" ] && [ -s "$LAB_DIR/initramfs.img" ] && [ -x "$LAB_DIR/bin/memhog" ] &&
    command -v qemu-system-x86_64 >/dev/null &&
    [ "$(cat "$LAB_DIR/stamp" 2>/dev/null)" = "$(inputs_sum)" ]
}
if [ "$mode" = --if-needed ] && up_to_date; then exit 0; fi

mkdir -p "$LAB_DIR"
LAB_DIR=$(cd "$LAB_DIR" && pwd)
# One builder at a time (two run-guest.sh calls on a fresh machine would both get here).
exec 9>"$LAB_DIR/.build.lock"
flock 9
if [ "$mode" = --if-needed ] && up_to_date; then exit 0; fi
t0=$(date +%s%N)

# ---- host packages ----
pkgs=$HOST_PKGS
command -v cc >/dev/null || command -v gcc >/dev/null || pkgs="$pkgs gcc libc6-dev"   # for memhog
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ -z "${LAB_SKIP_APT:-}" ] || fail "missing host packages:$missing (LAB_SKIP_APT is set)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    say "installing$missing from Debian"
    log="$LAB_DIR/apt-install.log"
    # shellcheck disable=SC2086
    { $SUDO apt-get -o DPkg::Lock::Timeout=300 update -q &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
          install -y -q --no-install-recommends $missing; } > "$log" 2>&1 ||
        { tail -n 20 "$log" >&2; fail "apt-get install$missing failed (log: $log)"; }
fi

# ---- kernel package: downloaded with a private apt configuration, never installed ----
mkdir -p "$LAB_DIR/apt/lists/partial" "$LAB_DIR/apt/cache/archives/partial" "$LAB_DIR/debs"
archive=${LAB_ARCHIVE:-}
if [ -z "$archive" ]; then   # the mirror this machine already uses (deb822 or one-line format)
    # (|| true: with no *.sources file cat fails, and pipefail would end the script here)
    archive=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
              awk '$1=="URIs:" && $2 !~ /security/ {print $2; exit}' || true)
fi
if [ -z "$archive" ]; then
    archive=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
archive=${archive:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""; [ -r "$keyring" ] && opts="[signed-by=$keyring] "
echo "deb ${opts}$archive $LAB_SUITE main" > "$LAB_DIR/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$LAB_DIR/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$LAB_DIR/apt/lists" -o Dir::Cache="$LAB_DIR/apt/cache"
     -o APT::Sandbox::User="$(id -un)")

apt_update() {
    [ -z "${apt_updated:-}" ] || return 0
    say "reading the package list of $LAB_SUITE ($archive)"
    apt-get "${APT[@]}" update -q >/dev/null || fail "apt-get update of the private $LAB_SUITE lists failed"
    apt_updated=1
}

# The suite's newest kernel is looked up once and remembered, so later builds reuse the
# downloaded package. Remove apt/kernel-pkg.* to move to a newer one.
kpkg_file="$LAB_DIR/apt/kernel-pkg.$LAB_SUITE"
if [ -n "${LAB_KERNEL_PKG:-}" ]; then
    kpkg=$LAB_KERNEL_PKG
elif [ -s "$kpkg_file" ]; then
    kpkg=$(cat "$kpkg_file")
else
    apt_update
    kpkg=$(apt-cache "${APT[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || fail "cannot resolve linux-image-amd64 in $LAB_SUITE"
    echo "$kpkg" > "$kpkg_file"
fi
KV=${kpkg#linux-image-}
deb=$(ls "$LAB_DIR/debs/${kpkg}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    apt_update
    say "downloading kernel $kpkg (about 100 MB)"
    (cd "$LAB_DIR/debs" && apt-get "${APT[@]}" download -q "$kpkg" >/dev/null) || fail "download of $kpkg failed"
    deb=$(ls "$LAB_DIR/debs/${kpkg}"_*.deb | head -n1)
fi

# ---- vmlinux and the initramfs base (busybox + modules) ----
KDIR="$LAB_DIR/kernel/$KV"
if [ ! -s "$KDIR/vmlinux" ] || [ ! -s "$KDIR/base.cpio" ] || [ "$(cat "$KDIR/base.mods" 2>/dev/null)" != "$MODS" ]; then
    say "unpacking $(basename "$deb")"
    X="$LAB_DIR/kernel/unpack.$$"
    rm -rf "$X"; mkdir -p "$X" "$KDIR"
    trap 'rm -rf "$X"' EXIT
    dpkg-deb -x "$deb" "$X"
    mroot=$X; [ -d "$X/lib/modules/$KV" ] || mroot=$X/usr   # newer packages use /usr/lib/modules
    [ -d "$mroot/lib/modules/$KV" ] || fail "no modules for $KV in $deb"

    # QEMU boots an uncompressed ELF vmlinux directly (PVH entry point), which spares the guest
    # a few seconds of decompressing itself under emulation. Find the compressed payload inside
    # vmlinuz by its magic number and keep the first candidate that unpacks to an ELF file.
    say "extracting vmlinux"
    vz="$X/boot/vmlinuz-$KV"
    found=""
    for spec in 'zstd -dcq:\x28\xb5\x2f\xfd' 'xz -dcq:\xfd\x37\x7a\x58\x5a\x00' 'gzip -dcq:\x1f\x8b\x08'; do
        for off in $(LC_ALL=C grep -obUaP "${spec#*:}" "$vz" | cut -d: -f1); do
            tail -c +$((off + 1)) "$vz" | ${spec%%:*} > "$KDIR/vmlinux.tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$KDIR/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                found=1; break 2
            fi
        done
    done
    [ -n "$found" ] || fail "could not extract vmlinux from $vz"
    mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"

    say "collecting kernel modules"
    depmod -b "$mroot" "$KV"
    S="$X/stage"
    mkdir -p "$S"/{bin,dev,proc,sys,tmp,run,mnt,newroot,lab,etc}
    cp /bin/busybox "$S/bin/busybox"
    echo "$KV" > "$S/etc/lab-kernel"
    for m in $MODS; do
        deps=$(modprobe -d "$mroot" -S "$KV" --show-depends "$m" 2>/dev/null) || { say "note: no module $m in $KV"; continue; }
        for f in $(echo "$deps" | awk '$1=="insmod" {print $2}'); do
            rel=${f#"$mroot"/}
            rel=${rel%.xz}; rel=${rel%.zst}; rel=${rel%.gz}
            mkdir -p "$S/$(dirname "$rel")"
            # stored uncompressed: busybox modprobe need not know the compression
            case "$f" in
                *.xz)  xz -dc "$f" > "$S/$rel" ;;
                *.zst) zstd -dcq "$f" > "$S/$rel" ;;
                *.gz)  gzip -dc "$f" > "$S/$rel" ;;
                *)     cp "$f" "$S/$rel" ;;
            esac
        done
    done
    mkdir -p "$S/lib/modules/$KV"
    cp "$mroot/lib/modules/$KV"/modules.{builtin,builtin.modinfo,order} "$S/lib/modules/$KV/" 2>/dev/null || true
    depmod -b "$S" "$KV"
    # uncompressed cpio: gunzip in the guest would cost more than reading 8 MB
    (cd "$S" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$KDIR/base.cpio"
    printf '%s' "$MODS" > "$KDIR/base.mods"
    rm -rf "$X"; trap - EXIT
fi

# ---- initramfs = base + /init (the kernel unpacks concatenated cpio archives in turn) ----
I="$LAB_DIR/init.stage"
rm -rf "$I"; mkdir -p "$I"
install -m 755 "$HERE/guest-init.sh" "$I/init"
(cd "$I" && echo init | cpio -o -H newc -R 0:0 --quiet) | cat "$KDIR/base.cpio" - > "$LAB_DIR/initramfs.img.tmp"
rm -rf "$I"
mv "$LAB_DIR/initramfs.img.tmp" "$LAB_DIR/initramfs.img"
ln -sfn "kernel/$KV/vmlinux" "$LAB_DIR/vmlinux"

# ---- memhog (runs in the guest from the host's root, so an ordinary dynamic binary) ----
mkdir -p "$LAB_DIR/bin"
CC=${CC:-$(command -v cc || command -v gcc)}
"$CC" -O2 -Wall -o "$LAB_DIR/bin/memhog.tmp" "$HERE/memhog.c" || fail "cannot compile memhog.c"
mv "$LAB_DIR/bin/memhog.tmp" "$LAB_DIR/bin/memhog"

inputs_sum > "$LAB_DIR/stamp"
t1=$(date +%s%N)
say "guest ready in $(awk -v n=$((t1 - t0)) 'BEGIN {printf "%.1f", n / 1e9}')s (kernel $KV, in $LAB_DIR)"
