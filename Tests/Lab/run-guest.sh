#!/bin/bash
# Run a command inside the swapfair lab guest: a real Linux kernel (Debian's 6.12) under QEMU,
# with cgroup v2, swap and PSI, sharing DIR with the host.
#
#   run-guest.sh DIR COMMAND [ARGS...]
#
# The first call on a machine builds the guest (build-guest.sh: Debian packages, a kernel
# download, the initramfs), which takes a few minutes; it is rebuilt by itself whenever
# guest-init.sh, build-guest.sh or memhog.c change.
#
# In the guest:
#   - "/" is the host's root, read-only, under a tmpfs overlay: the host's tools, the Swift
#     toolchain and host-built binaries work as they are; writes outside DIR vanish at power-off
#   - DIR is mounted read-write at its host path and is the working directory
#   - cgroup2 is at /sys/fs/cgroup (nsdelegate,memory_recursiveprot) with every controller
#     enabled in the root's cgroup.subtree_control; PSI is on; swap is active
#   - the command runs as root, in the root cgroup, with stdin from /dev/null and a clean
#     environment: the host's PATH and LANG, LAB_GUEST=1, SWAPFAIR_LAB_DIR, LAB_SWAP_DELAY and
#     LAB_DISKS_DELAY (the disks' latencies, "none" for none), and LAB_PASS_ENV
# A single COMMAND argument is a shell command line; several are run as an argv.
# The command's output is streamed while it runs.
#
# Exit status: the command's; 124 timeout; 125 the guest died or reported no status;
#              126 setup failed (building the guest, or the guest's own setup)
#
# Env knobs:
#   LAB_MEM=2G           guest RAM
#   LAB_SMP=2            guest CPUs (all emulated on one host thread, see below)
#   LAB_TIMEOUT=900      seconds until the guest is killed (exit status 124)
#   LAB_SWAP=zram:2G     zram:SIZE, none, or disk:SIZE: a sparse file on the host as a virtio
#                        disk. Pages in zram are not charged to any cgroup; use disk:SIZE when
#                        a test depends on where swapped memory is accounted.
#   LAB_SWAP_DELAY=1ms   with disk:SIZE: each request to that disk takes this much longer (nbdkit's
#                        delay filter on the host serves the image; the wait costs the guest no CPU)
#   LAB_DISK2=SIZE       a second disk, a sparse image with the serial "labdisk2", for what the
#                        guest keeps on the host's storage
#   LAB_DISK3=SIZE       a third one, serial "labdisk3" (double_paging.py's host swap disk)
#   LAB_DISKS_DELAY=1ms  the second and third disks' latency (default: LAB_SWAP_DELAY's; "none":
#                        none), so that a test may have slow disks of its own beside a fast swap disk
#   LAB_DISKS_SERIAL=1   with a delay, the second and third disks serve one request at a time
#                        (nbdkit's noparallel filter): a disk whose capacity, not only its latency,
#                        is limited, so that I/O off a task's path still takes the disk from it
#   LAB_PASS_ENV="A B"   host variables to pass to the command
#   LAB_MODULES="nbd"    modules to load before the command (the command may modprobe any
#                        module in the initramfs itself)
#   LAB_CGROUP_OPTS=nsdelegate,memory_recursiveprot   cgroup2 mount options
#   LAB_APPEND="..."     extra kernel command line;  LAB_QEMU_ARGS="..."  extra QEMU arguments
#   LAB_VERBOSE=1        print the kernel console and the timings afterwards
#   LAB_KEEP=1           keep the run dir (console.log, out.log, timing, rc) and print its path
#   SWAPFAIR_LAB_DIR     where the guest and the run dirs live (default ~/.cache/swapfair-lab)
#
# QEMU emulates the CPU (TCG) on a single host thread. Multi-threaded TCG is faster for
# parallel work, but the guest kernel then oopses now and then ("Oops: int3") when it patches
# its own code (static keys) while another vCPU runs it. KVM is no way out here: /dev/kvm on
# this kind of machine is a nested one on which QEMU aborts ("failed to set MSR 0x10a").
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 2 ]; then
    echo "usage: $0 DIR COMMAND [ARGS...]   (see the comments at the top for the knobs)" >&2
    exit 2
fi
SHARE=$(cd "$1" 2>/dev/null && pwd) || { echo "lab: no such directory: $1" >&2; exit 2; }
shift

export SWAPFAIR_LAB_DIR=${SWAPFAIR_LAB_DIR:-$HOME/.cache/swapfair-lab}
"$HERE/build-guest.sh" --if-needed || { echo "lab: building the guest failed" >&2; exit 126; }
LAB_DIR=$(cd "$SWAPFAIR_LAB_DIR" && pwd)
SWAPFAIR_LAB_DIR=$LAB_DIR

LAB_MEM=${LAB_MEM:-2G}
LAB_SMP=${LAB_SMP:-2}
LAB_TIMEOUT=${LAB_TIMEOUT:-900}
LAB_SWAP=${LAB_SWAP:-zram:2G}

mkdir -p "$LAB_DIR/runs"
RUN=$(mktemp -d "$LAB_DIR/runs/run.XXXXXX")
cleanup() {
    for p in "${nbdkit_pids[@]}"; do kill "$p" 2>/dev/null; done
    if [ -n "${LAB_KEEP:-}" ]; then echo "lab: run dir kept: $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # single-quote for sh

# settings for guest-init.sh
{
    echo "LAB_SWAP=$(sq "$LAB_SWAP")"
    echo "LAB_MODULES=$(sq "${LAB_MODULES:-}")"
    echo "LAB_CGROUP_OPTS=$(sq "${LAB_CGROUP_OPTS:-nsdelegate,memory_recursiveprot}")"
    echo "LAB_SHARE_PATH=$(sq "$SHARE")"
    echo "LAB_INIT=$(sq "${LAB_INIT:-shell}")"
} > "$RUN/env"

disks_delay=${LAB_DISKS_DELAY:-${LAB_SWAP_DELAY:-none}}
# the command, as a script run by the host's /bin/sh inside the guest (told the disks' delays)
{
    echo "export PATH=$(sq "$PATH")"
    [ -n "${LANG:-}" ] && echo "export LANG=$(sq "$LANG")"
    echo "export LAB_GUEST=1 SWAPFAIR_LAB_DIR=$(sq "$LAB_DIR")"
    echo "export LAB_SWAP_DELAY=$(sq "${LAB_SWAP_DELAY:-none}") LAB_DISKS_DELAY=$(sq "$disks_delay") LAB_DISKS_SERIAL=$(sq "${LAB_DISKS_SERIAL:-0}")"
    for v in ${LAB_PASS_ENV:-}; do
        [ -n "${!v+set}" ] && echo "export $v=$(sq "${!v}")"
    done
    echo "cd $(sq "$SHARE") || exit 126"
    if [ $# -eq 1 ]; then
        echo "$1"
    else
        printf 'exec'; for a in "$@"; do printf ' %s' "$(sq "$a")"; done; echo
    fi
} > "$RUN/cmd"

qe() { printf '%s' "${1//,/,,}"; }   # in a QEMU option value a comma is written ",,"
QEMU=(qemu-system-x86_64 -M pc -accel tcg,thread=single -cpu max -smp "$LAB_SMP" -m "$LAB_MEM"
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$LAB_DIR/vmlinux" -initrd "$LAB_DIR/initramfs.img"
      # swapfair_lab=1 lets scripts such as check.sh make sure they run in the guest
      -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off cgroup_no_v1=all psi=1 rdinit=/init swapfair_lab=1 ${LAB_APPEND:-}"
      -serial "file:$RUN/console.log"
      -device virtio-serial-pci
      -chardev "file,id=labout,append=on,path=$(qe "$RUN")/out.log" -device virtserialport,chardev=labout,name=labout
      -virtfs "local,path=$(qe "$RUN"),mount_tag=labctl,security_model=none"
      -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
      -virtfs "local,path=$(qe "$SHARE"),mount_tag=labshare,security_model=none,multidevs=remap")
nbdkit_pids=()
# disk NAME SIZE [DELAY [SERIAL]]: a sparse image as a virtio disk with serial NAME, each request
# DELAY late if given (and not "none"), and one at a time if SERIAL is 1.
disk() {
    truncate -s "$2" "$RUN/$1.img" || exit 126
    local d=${3:-none} serial=()
    [ "${4:-0}" = 1 ] && serial=(--filter=noparallel)
    if [ "$d" != none ]; then
        # A disk with a latency of its own, like a real one: the image served by nbdkit, each
        # read, write and discard held back by the delay filter before it is done (and, serial,
        # after the one before it is done: noparallel is the outer filter).
        nbdkit --foreground --unix "$RUN/$1.sock" "${serial[@]}" --filter=delay file "$RUN/$1.img" \
            ${serial:+serialize=all-requests} \
            delay-read="$d" delay-write="$d" delay-trim="$d" delay-zero="$d" > "$RUN/nbdkit-$1.log" 2>&1 &
        nbdkit_pids+=($!)
        for _ in $(seq 100); do [ -S "$RUN/$1.sock" ] && break; sleep 0.1; done
        [ -S "$RUN/$1.sock" ] || { echo "lab: nbdkit did not serve the disk $1: $(cat "$RUN/nbdkit-$1.log")" >&2; exit 126; }
        QEMU+=(-drive "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$(qe "$RUN")/$1.sock,if=none,id=$1,cache=unsafe,discard=unmap")
    else
        QEMU+=(-drive "file=$(qe "$RUN")/$1.img,format=raw,if=none,id=$1,cache=unsafe,discard=unmap")
    fi
    QEMU+=(-device "virtio-blk-pci,drive=$1,serial=$1")
}
case "$LAB_SWAP" in
    disk:*) disk labswap "${LAB_SWAP#disk:}" "${LAB_SWAP_DELAY:-none}" ;;
esac
[ -n "${LAB_DISK2:-}" ] && disk labdisk2 "$LAB_DISK2" "$disks_delay" "${LAB_DISKS_SERIAL:-0}"
[ -n "${LAB_DISK3:-}" ] && disk labdisk3 "$LAB_DISK3" "$disks_delay" "${LAB_DISKS_SERIAL:-0}"
# shellcheck disable=SC2206
[ -n "${LAB_QEMU_ARGS:-}" ] && QEMU+=($LAB_QEMU_ARGS)

: > "$RUN/out.log"
t0=$(date +%s%N)
timeout -k 10 "$LAB_TIMEOUT" "${QEMU[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
qpid=$!
trap 'kill $qpid 2>/dev/null; wait $qpid; exit 130' INT TERM
# stream the command's output; tail ends once QEMU has exited and the file is read to its end
tail -s 0.2 -c +1 -f --pid=$qpid "$RUN/out.log"
wait $qpid
qrc=$?
t1=$(date +%s%N)

console_tail() { echo "lab: last kernel console lines:" >&2; tail -n "$1" "$RUN/console.log" >&2; }

if [ -n "${LAB_VERBOSE:-}" ]; then
    echo "----- kernel console -----" >&2
    cat "$RUN/console.log" >&2
    # guest uptime when PID 1 started (init), when the command started (ready) and ended (done)
    echo "lab: wall $(awk -v n=$((t1 - t0)) 'BEGIN {printf "%.1f", n / 1e9}')s from QEMU start to exit;" \
         "guest uptime: $(cat "$RUN/timing" 2>/dev/null || echo '(no timing)')" >&2
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "lab: TIMEOUT: the guest was killed after ${LAB_TIMEOUT}s" >&2
    console_tail 30
    exit 124
fi
if [ ! -s "$RUN/rc" ]; then
    echo "lab: the guest stopped without reporting an exit status (QEMU exit status $qrc)" >&2
    [ -s "$RUN/qemu.log" ] && { echo "lab: QEMU said:" >&2; cat "$RUN/qemu.log" >&2; }
    console_tail 40
    exit 125
fi
rc=$(cat "$RUN/rc")
if grep -a -q -E 'Oops|BUG:|Kernel panic|WARNING: CPU' "$RUN/console.log"; then
    echo "lab: WARNING: the guest kernel reported a problem:" >&2
    grep -a -E -A3 'Oops|BUG:|Kernel panic|WARNING: CPU' "$RUN/console.log" | head -n 20 >&2
fi
if [ "$rc" = 126 ] && grep -q '^lab-init: FATAL' "$RUN/console.log"; then
    echo "lab: guest setup failed: $(grep '^lab-init: FATAL' "$RUN/console.log" | cut -d' ' -f3-)" >&2
elif [ "$rc" != 0 ] && [ -z "${LAB_VERBOSE:-}" ]; then
    echo "lab: the command exited with status $rc" >&2
    console_tail 20
fi
exit "$rc"
