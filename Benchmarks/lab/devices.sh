#!/bin/bash
# What one block request costs through each path a guest's or the host's swap can take, side by
# side on the lab's real kernel. First, all backed by RAM, so that the figures are the paths' own
# cost: null_blk (in the kernel), a swapfair NBD export through the kernel's nbd client, the same
# VM volume as its ublk block device (`ublk = true`, through the engine), and swapfaird's host ublk
# device. Then on the lab's disk (a virtio disk, an image file on the host), as
# the host's swap has it: fio on the disk itself, and swapfaird's ublk device with the disk as its
# volume, where the requests a queue has in flight at once matter. fio, 4 KiB random reads and
# writes at queue depth 1 (a guest pager's synchronous faults) and 32. Prints one table.
#   Benchmarks/lab/devices.sh          on the host: boots the lab and runs itself there
#   SWAPFAIRD_COMPARE=path             adds rows for another build of swapfaird on the disk
set -u
cd "$(dirname "$0")/../.."
if ! grep -q swapfair_lab /proc/cmdline; then
    swift build -c release --product swapfaird >/dev/null && swift build -c release --product swapfairctl >/dev/null || exit 1
    exec env LAB_SWAP=disk:2G LAB_TIMEOUT=1200 LAB_PASS_ENV="SWAPFAIRD_COMPARE" Tests/Lab/run-guest.sh . "bash Benchmarks/lab/devices.sh"
fi
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=/tmp/devices-bench
mkdir -p "$OUT" /run/swapfair
modprobe null_blk nr_devices=1 memory_backed=1 gb=1 bs=4096 queue_mode=2
modprobe nbd
modprobe ublk_drv
# config FILE STATE VOLUME [UBLK]: a swap-only configuration whose host swap is VOLUME (a TOML
# line); UBLK true: the VM's volume is also a ublk block device.
config() {
    cat > "$1" <<TOML
[host]
state_dir = "$2"
nbd_dir = "/run/swapfair/nbd"
$3
[[vm]]
name = "bench"
swap_device = { size = "1G", ublk = ${4:-false} }
TOML
}
# serve BUILD CONFIG LOG: starts that build of swapfaird ($daemon) and finds its ublk device ($dev).
serve() {
    rm -f /run/swapfair/nbd/bench.sock
    "$1" --config "$2" --socket /run/swapfair/bench.sock --swap-only > "$3" 2>&1 &
    daemon=$!
    for _ in $(seq 300); do grep -q "device=/dev/ublkb" "$3" && [ -S /run/swapfair/nbd/bench.sock ] && break; sleep 0.1; done
    dev=$(grep "host swap device" "$3" | grep -o "device=/dev/ublkb[0-9]*" | head -1 | cut -d= -f2)
    vmdev=$(grep "VM swap block device" "$3" | grep -o "device=/dev/ublkb[0-9]*" | head -1 | cut -d= -f2)
    [ -n "$dev" ] || { echo "no ublk device from $1"; tail -3 "$3"; }
}
rows=""
# measure DEVICE LABEL [SIZE]: the four fio jobs on DEVICE, a row each.
measure() {
    local dev=$1 label=$2 size=${3:-256M}
    for job in "randread 1" "randwrite 1" "randread 32" "randwrite 32"; do
        set -- $job
        fio --name=b --filename=$dev --rw=$1 --bs=4k --iodepth=$2 --ioengine=io_uring --direct=1 --size=$size \
            --time_based --runtime=6 --output-format=json > "$OUT/fio.json" 2>/dev/null
        rows+=$(python3 - "$label" "$1" "$2" "$OUT/fio.json" <<'PY'
import json, sys
dev, rw, qd, path = sys.argv[1:]
try:
    j = json.load(open(path))["jobs"][0][rw.replace("rand", "")]
    print(f"{dev}|{rw}|{qd}|{j['iops']:.0f}|{j['clat_ns']['mean'] / 1000:.0f}|{j['clat_ns']['percentile'].get('99.000000', 0) / 1000:.0f}")
except Exception as e:
    print(f"{dev}|{rw}|{qd}|failed: {e}|-|-")
PY
)$'\n'
    done
}

# All in RAM: null_blk, this build's NBD export and ublk device (its volume a file on tmpfs), and
# the other build's ublk device.
config "$OUT/swapfair.toml" /tmp/devices-state 'host_swap_size = "1G"' true
serve "$BIN/swapfaird" "$OUT/swapfair.toml" "$OUT/daemon.log"
nbd-client -u -N bench /run/swapfair/nbd/bench.sock /dev/nbd1 -b 4096 > "$OUT/nbd-client.log" 2>&1 || { echo "nbd-client failed"; cat "$OUT/nbd-client.log"; }
measure /dev/nullb0 "null_blk (kernel, RAM)"
measure /dev/nbd1 "swapfair NBD export (kernel nbd client, RAM)"
[ -n "$vmdev" ] && measure "$vmdev" "the same volume as a ublk block device (RAM)"
[ -n "$dev" ] && measure "$dev" "swapfair host ublk device (RAM)"
nbd-client -d /dev/nbd1 >/dev/null 2>&1
kill $daemon; wait $daemon
# A stopped daemon leaves the VM's block device to the next; one without it in its configuration removes it.
config "$OUT/swapfair.toml" /tmp/devices-state 'host_swap_size = "1G"'
serve "$BIN/swapfaird" "$OUT/swapfair.toml" "$OUT/daemon-cleanup.log"
for _ in $(seq 100); do grep -q "removed the ublk device" "$OUT/daemon-cleanup.log" && break; sleep 0.1; done
kill $daemon; wait $daemon
for build in ${SWAPFAIRD_COMPARE:-}; do
    rm -rf /tmp/devices-state-compare
    config "$OUT/compare.toml" /tmp/devices-state-compare 'host_swap_size = "1G"'
    serve "$build" "$OUT/compare.toml" "$OUT/compare-daemon.log"
    [ -n "$dev" ] && measure "$dev" "swapfair host ublk device (RAM) ($build)"
    kill $daemon; wait $daemon
    rm -rf /tmp/devices-state-compare
done

# On the lab's disk: the disk itself, then swapfaird's ublk device over it (the whole disk as the
# volume), for this build and the one to compare with.
disk=$(awk '/^\/dev\/vd/ {print $1}' /proc/swaps | head -1)
if [ -n "$disk" ]; then
    swapoff "$disk"
    measure "$disk" "lab disk $disk (kernel)" 1G
    n=0
    for build in "$BIN/swapfaird" ${SWAPFAIRD_COMPARE:-}; do
        n=$((n + 1))
        rm -rf /tmp/devices-disk-state$n
        config "$OUT/disk$n.toml" /tmp/devices-disk-state$n "host_swap_device = \"$disk\""
        serve "$build" "$OUT/disk$n.toml" "$OUT/disk-daemon$n.log"
        label="swapfair ublk device over $disk"
        [ "$build" != "$BIN/swapfaird" ] && label="$label ($build)"
        [ -n "$dev" ] && measure "$dev" "$label" 1G
        kill $daemon; wait $daemon
    done
    mkswap "$disk" >/dev/null && swapon "$disk"
fi
echo
echo "4 KiB requests (lab kernel $(uname -r), QEMU TCG: every instruction emulated)"
printf '%s' "$rows" | python3 -c '
import sys
rows = [l.split("|") for l in sys.stdin.read().splitlines() if l]
head = ["DEVICE", "PATTERN", "DEPTH", "IOPS", "MEAN LATENCY us", "P99 us"]
w = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
'
