#!/usr/bin/env bash
# What the disk sees behind an NBD export at queue depth 32: for fio on the file itself, fio in
# lock-step (it submits 32 reads at once and waits for all 32 before the next burst), a swapfair
# export and qemu-nbd, side by side in one run, each job's IOPS beside the disk's own figures from
# /sys/block/DEV/stat over the job: reads, average time per read and average queue.
#   Benchmarks/nbd/disk-latency.sh [SECONDS_PER_JOB]        (default 6)
# One NBD connection keeps its 32 requests together: the client sends a burst, the server
# submits it, the disk answers it, the replies go back together. The lock-step row is that
# pattern without the socket.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-6}
. Benchmarks/nbd/common.sh
bench_start disk fio qemu-utils

mkdir -p "$work/state/volumes"
for f in state/volumes/bench local qemu; do
    dd if=/dev/zero of="$work/$f.img" bs=1M count=1024 oflag=direct status=none
done
serve_swapfair "${SWAPFAIRD:-.build/release/swapfaird}" "$work/state" "$work/nbd" 1G "${SWAP_QUEUE_DEPTH:-64}"
qemu-nbd --format=raw --cache=none --aio=io_uring --shared=8 --persistent --socket="$work/qemu.sock" "$work/qemu.img" &
pids+=($!)
for s in "$work/nbd/bench.sock" "$work/qemu.sock"; do
    for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
done

# The whole disk the files live on (a partition's statistics count in its disk's too).
dev=$(basename "$(df --output=source "$work" | tail -1)")
[ -e "/sys/class/block/$dev/partition" ] && dev=$(basename "$(readlink -f "/sys/class/block/$dev/..")")
stat=/sys/block/$dev/stat
[ -r "$stat" ] || { echo "disk-latency: no block statistics for $dev (is $work on a block device?)" >&2; exit 1; }

# Fields of the stat file: 1 reads completed, 4 milliseconds reading, 11 weighted milliseconds in flight.
run() {  # label, then fio's arguments
    local label=$1 out r0 t0 q0 r1 t1 q1 s0 s1
    shift
    read -r r0 t0 q0 < <(awk '{print $1, $4, $11}' "$stat"); s0=$(date +%s.%N)
    out=$(fio --name=j --rw=randread --bs=4k --iodepth=32 --size=1G --runtime="$secs" --time_based --output-format=json "$@" 2>/dev/null)
    read -r r1 t1 q1 < <(awk '{print $1, $4, $11}' "$stat"); s1=$(date +%s.%N)
    python3 -c '
import json, sys
label, r0, t0, q0, r1, t1, q1, s0, s1 = sys.argv[1], *map(float, sys.argv[2:])
text = sys.stdin.read()
iops = json.loads(text[text.index("{"):])["jobs"][0]["read"]["iops"]
reads = r1 - r0
print("%-34s %9.0f %12.0f %10.3f %8.1f" % (label, iops, reads, (t1 - t0) / max(reads, 1), (q1 - q0) / 1000 / (s1 - s0)))
' "$label" "$r0" "$t0" "$q0" "$r1" "$t1" "$q1" "$s0" "$s1" <<<"$out"
}
printf '%-34s %9s %12s %10s %8s\n' "4 KiB random read, QD 32" IOPS "DISK READS" "MS A READ" QUEUE
run "fio io_uring on the file" --filename="$work/local.img" --ioengine=io_uring --direct=1
run "fio io_uring, lock-step bursts" --filename="$work/local.img" --ioengine=io_uring --direct=1 \
    --iodepth_batch_submit=32 --iodepth_batch_complete_min=32
run "swapfair export (fio nbd)" --ioengine=nbd --uri="nbd+unix:///bench?socket=$work/nbd/bench.sock"
run "qemu-nbd (fio nbd)" --ioengine=nbd --uri="nbd+unix:///?socket=$work/qemu.sock"
echo "($secs s per job on /dev/$dev, $(df --output=fstype "$work" | tail -1); fio $(fio --version); qemu-nbd cache=none aio=io_uring)"
