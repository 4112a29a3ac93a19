#!/usr/bin/env bash
# Throughput of one swapfair NBD export against qemu-nbd and nbdkit serving the same kind of
# backing file, and against fio's io_uring on the file itself (the ceiling), side by side in one
# run: 4 KiB random read and write at queue depth 1 (a swapping guest's usual case) and 32, 64 KiB
# sequential read and write.
#   Benchmarks/nbd/throughput.sh [SECONDS_PER_JOB]        (default 8)
# SWAPFAIRD=path runs another build of the daemon; SWAPFAIRD_COMPARE=path adds a column for a
# second build, served from its own file of the same kind (two versions side by side in one run).
# Needs fio, qemu-utils (qemu-nbd), nbdkit; installs them from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
size=1G
. Benchmarks/nbd/common.sh
bench_start bench fio qemu-utils nbdkit

# The same kind of backing file for every server: a fully written file of $size on the same disk
# (written, not fallocated: reads of unwritten extents never reach the disk).
compare=${SWAPFAIRD_COMPARE:-}
for f in swapfair qemu nbdkit local ${compare:+compare}; do
    dd if=/dev/zero of="$work/$f.img" bs=1M count=$(( ${size%G} * 1024 )) oflag=direct status=none
done
mkdir -p "$work/state/volumes"
mv "$work/swapfair.img" "$work/state/volumes/bench.img"
serve_swapfair "${SWAPFAIRD:-.build/release/swapfaird}" "$work/state" "$work/nbd" "$size"
if [ -n "$compare" ]; then
    mkdir -p "$work/state-b/volumes"
    mv "$work/compare.img" "$work/state-b/volumes/bench.img"
    serve_swapfair "$compare" "$work/state-b" "$work/nbd-b" "$size"
fi
qemu-nbd --format=raw --cache=none --aio=io_uring --shared=8 --persistent --socket="$work/qemu.sock" "$work/qemu.img" &
pids+=($!)
nbdkit --exit-with-parent --foreground --unix "$work/nbdkit.sock" file "$work/nbdkit.img" cache=none &
pids+=($!)
# No backing I/O at all: what the NBD transport alone (fio's client, the socket, a server's loop)
# allows on this machine, the ceiling for every NBD server here.
nbdkit --exit-with-parent --foreground --unix "$work/null.sock" null size=$size &
pids+=($!)
for s in "$work/nbd/bench.sock" "$work/qemu.sock" "$work/nbdkit.sock" "$work/null.sock" ${compare:+"$work/nbd-b/bench.sock"}; do
    for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
done

job() {  # target rw bs depth [jobs] -> prints IOPS and MiB/s (jobs: fio threads, each its own connection)
    local target=$1 rw=$2 bs=$3 qd=$4 n=${5:-1} out
    if [ "${target#/}" != "$target" ]; then
        out=$(fio --name=j --filename="$target" --ioengine=io_uring --direct=1 --rw="$rw" --bs="$bs" --iodepth="$qd" \
              --numjobs="$n" --group_reporting --size=$size --runtime="$secs" --time_based --output-format=json 2>/dev/null)
    else
        out=$(fio --name=j --ioengine=nbd --uri="$target" --rw="$rw" --bs="$bs" --iodepth="$qd" \
              --numjobs="$n" --group_reporting --size=$size --runtime="$secs" --time_based --output-format=json 2>/dev/null)
    fi
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; r=j["read"]; w=j["write"]
print("%.0f %.1f" % (r["iops"]+w["iops"], (r["bw_bytes"]+w["bw_bytes"])/1048576))' <<<"$out"
}

declare -A T=(
    [swapfair]="nbd+unix:///bench?socket=$work/nbd/bench.sock"
    [qemu-nbd]="nbd+unix:///?socket=$work/qemu.sock"
    [nbdkit]="nbd+unix:///?socket=$work/nbdkit.sock"
    [nbdkit-null]="nbd+unix:///?socket=$work/null.sock"
    [io_uring-local]="$work/local.img"
)
order=(io_uring-local swapfair qemu-nbd nbdkit nbdkit-null)
if [ -n "$compare" ]; then
    T[swapfair-compare]="nbd+unix:///bench?socket=$work/nbd-b/bench.sock"
    order=(io_uring-local swapfair swapfair-compare qemu-nbd nbdkit nbdkit-null)
fi
printf '%-16s %-14s %12s %12s %10s\n' TARGET JOB IOPS MiB/s "OF LOCAL"
# JOBS="randread 4k 1,read 64k 8,randread 4k 8 4" picks jobs (rw, block size, queue depth, and
# optionally fio threads: "8 4" is four connections of depth 8, as a multi-connection client
# such as `nbd-client -C 4` drives an export; the exports advertise NBD_FLAG_CAN_MULTI_CONN).
IFS=, read -ra jobs <<<"${JOBS:-randread 4k 1,randwrite 4k 1,randread 4k 32,randwrite 4k 32,read 64k 8,write 64k 8}"
for spec in "${jobs[@]}"; do
    set -- $spec
    declare -A iops=()
    for t in "${order[@]}"; do
        read -r i m < <(job "${T[$t]}" "$1" "$2" "$3" "${4:-1}")
        iops[$t]=$i
        pct=$(python3 -c "print('%.0f%%' % (100*$i/max(${iops[io_uring-local]},1)))")
        printf '%-16s %-14s %12s %12s %10s\n' "$t" "$1/$2/${4:+$4x}$3" "$i" "$m" "$pct"
    done
    echo
done
echo "($secs s per job, fio $(fio --version), backing files on $(df --output=fstype "$work" | tail -1); qemu-nbd with cache=none aio=io_uring, nbdkit file cache=none; nbdkit-null: nbdkit's null plugin, no I/O behind it)"
