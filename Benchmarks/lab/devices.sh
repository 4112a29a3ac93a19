#!/bin/bash
# What one block request costs through each path a guest's or the host's swap can take, side by
# side on the lab's real kernel: null_blk (in the kernel, RAM), a swapfair NBD export through the
# kernel's nbd client, and swapfaird's ublk device, all three backed by RAM, so that the figures
# are the paths' own cost. fio, 4 KiB random reads and writes at queue depth 1 (a guest pager's
# synchronous faults) and 32. Prints one table.
#   Benchmarks/lab/devices.sh          on the host: boots the lab and runs itself there
set -u
cd "$(dirname "$0")/../.."
if ! grep -q swapfair_lab /proc/cmdline; then
    swift build -c release --product swapfaird >/dev/null && swift build -c release --product swapfairctl >/dev/null || exit 1
    exec env LAB_SWAP=none LAB_TIMEOUT=900 Tests/Lab/run-guest.sh . "bash Benchmarks/lab/devices.sh"
fi
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=/tmp/devices-bench
mkdir -p "$OUT" /run/swapfair
modprobe null_blk nr_devices=1 memory_backed=1 gb=1 bs=4096 queue_mode=2
modprobe nbd
modprobe ublk_drv
cat > "$OUT/swapfair.toml" <<TOML
[host]
state_dir = "/tmp/devices-state"
nbd_dir = "/run/swapfair/nbd"
host_swap_size = "1G"
[[vm]]
name = "bench"
swap_device = { size = "1G" }
TOML
"$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket /run/swapfair/bench.sock --swap-only > "$OUT/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do grep -q "device=/dev/ublkb" "$OUT/daemon.log" && [ -S /run/swapfair/nbd/bench.sock ] && break; sleep 0.1; done
ublk=$(grep -o "device=/dev/ublkb[0-9]*" "$OUT/daemon.log" | head -1 | cut -d= -f2)
nbd-client -u -N bench /run/swapfair/nbd/bench.sock /dev/nbd1 -b 4096 > "$OUT/nbd-client.log" 2>&1 || { echo "nbd-client failed"; cat "$OUT/nbd-client.log"; }
rows=""
for dev in /dev/nullb0 /dev/nbd1 ${ublk:-}; do
    for job in "randread 1" "randwrite 1" "randread 32" "randwrite 32"; do
        set -- $job
        fio --name=b --filename=$dev --rw=$1 --bs=4k --iodepth=$2 --ioengine=io_uring --direct=1 --size=256M \
            --time_based --runtime=6 --output-format=json > "$OUT/fio.json" 2>/dev/null
        rows+=$(python3 - "$dev" "$1" "$2" "$OUT/fio.json" <<'PY'
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
done
nbd-client -d /dev/nbd1 >/dev/null 2>&1
kill $daemon; wait $daemon
echo
echo "4 KiB requests, each path backed by RAM (lab kernel $(uname -r), QEMU TCG: every instruction emulated)"
printf '%s' "$rows" | python3 -c '
import sys
rows = [l.split("|") for l in sys.stdin.read().splitlines() if l]
names = {"/dev/nullb0": "null_blk (kernel)", "/dev/nbd1": "swapfair NBD export (kernel nbd client)"}
head = ["DEVICE", "PATTERN", "DEPTH", "IOPS", "MEAN LATENCY us", "P99 us"]
rows = [[names.get(r[0], "swapfair ublk device " + r[0])] + r[1:] for r in rows]
w = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
'
