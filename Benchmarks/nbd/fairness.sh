#!/usr/bin/env bash
# Fairness of swapfair's swap engine: four exports with weights 1:2:3:4, all saturating
# (fio, 4 KiB random reads at queue depth 32 each); then one export with a reservation and one with
# a limit; then the same four clients on four qemu-nbd servers (no sharing policy) as the baseline.
#   Benchmarks/nbd/fairness.sh [SECONDS] [ENGINE_QUEUE_DEPTH]     (default 15 s, depth 2)
# The engine's queue depth is kept small so that the device, not this machine's CPU and sockets,
# is the bottleneck, as a host's swap disk is: the scheduler only orders requests that wait.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
qd=${2:-2}
Scripts/install-deps >/dev/null
swift build -c release --product swapfaird 2>&1 | grep -E "error|complete" | tail -1 || true
work=$(mktemp -d /var/tmp/swapfair-fair.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
size=512M
mkdir -p "$work/state/volumes"
for i in 1 2 3 4; do
    dd if=/dev/zero of="$work/state/volumes/vm$i.img" bs=1M count=512 oflag=direct status=none
    cp --sparse=never "$work/state/volumes/vm$i.img" "$work/q$i.img"
done

swapfair_uri() { echo "nbd+unix:///vm$1?socket=$work/nbd/vm$1.sock"; }
qemu_uri() { echo "nbd+unix:///?socket=$work/q$1.sock"; }

# Four fio jobs at once, one per target; prints "name iops" per job.
run_fio() {
    local args=()
    for i in 1 2 3 4; do
        args+=(--name="vm$i" --ioengine=nbd --uri="$($1 "$i")" --rw=randread --bs=4k --iodepth=32 --size=$size)
    done
    # ramp_time: the four jobs connect one after another; the first would otherwise run alone for a
    # moment and count it as its share.
    fio --runtime="$secs" --ramp_time=2 --time_based --output-format=json "${args[@]}" 2>/dev/null \
        | python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])
for x in j["jobs"]: print(x["jobname"], round(x["read"]["iops"]))'
}

start_swapfair() {  # $1: a function printing the swap_device keys of VM $i
    { printf '[host]\nstate_dir = "%s/state"\nnbd_dir = "%s/nbd"\nswap_queue_depth = %s\n' "$work" "$work" "$qd"
      for i in 1 2 3 4; do printf '[[vm]]\nname = "vm%s"\nswap_device = { size = "%s", %s }\n' "$i" "$size" "$($1 "$i")"; done
    } > "$work/swapfair.toml"
    rm -rf "$work/nbd"
    .build/release/swapfaird --config "$work/swapfair.toml" --socket "$work/ctl.sock" --swap-only --log-level error &
    dpid=$!
    for _ in $(seq 100); do [ -S "$work/nbd/vm4.sock" ] && break; sleep 0.1; done
}
stop_swapfair() { kill "$dpid"; wait "$dpid" 2>/dev/null || true; }

report() {  # stdin: "name iops" lines; $1: the weights
    python3 -c '
import sys
w = [float(x) for x in sys.argv[1].split()]
rows = [l.split() for l in sys.stdin if l.strip()]
iops = [float(r[1]) for r in rows]
total = sum(iops)
norm = [i / wi for i, wi in zip(iops, w)]
jain = sum(norm) ** 2 / (len(norm) * sum(x * x for x in norm))
print("%-6s %7s %9s %8s %9s %8s" % ("EXPORT", "WEIGHT", "IOPS", "SHARE", "WEIGHTED", "ERROR"))
for (name, _), i, wi in zip(rows, iops, w):
    want = wi / sum(w)
    print("%-6s %7g %9.0f %7.1f%% %8.1f%% %+7.1f%%" % (name, wi, i, 100 * i / total, 100 * want, 100 * (i / total - want) / want))
print("total %.0f IOPS; Jain index on weight-normalised throughput %.4f; largest share error %.1f%%" % (
    total, jain, max(abs(100 * (i / total - wi / sum(w)) / (wi / sum(w))) for i, wi in zip(iops, w))))
' "$1"
}

echo "== swapfair: weights 1:2:3:4, all four saturating ($secs s)"
weights() { echo "weight = $(( $1 * 100 ))"; }
start_swapfair weights
run_fio swapfair_uri | tee "$work/w.txt" | report "1 2 3 4"
stop_swapfair
total=$(awk '{s += $2} END {print s}' "$work/w.txt")

res=$(( total * 30 / 100 )); lim=$(( total * 10 / 100 ))
echo
echo "== swapfair: equal weights; vm1 reserves $res IOPS (30% of the total above), vm4 is limited to $lim IOPS (10%)"
shares() {
    case $1 in
        1) echo "weight = 100, reservation = \"$res iops\"" ;;
        4) echo "weight = 1000, limit = \"$lim iops\"" ;;
        *) echo "weight = 100" ;;
    esac
}
start_swapfair shares
run_fio swapfair_uri | tee "$work/rl.txt" | awk 'BEGIN { printf "%-6s %9s %8s\n", "EXPORT", "IOPS", "SHARE" }
    { n[NR] = $1; v[NR] = $2; t += $2 } END { for (i = 1; i <= NR; i++) printf "%-6s %9d %7.1f%%\n", n[i], v[i], 100 * v[i] / t; printf "total %d IOPS\n", t }'
stop_swapfair
python3 - "$work/rl.txt" "$res" "$lim" <<'PY'
import sys
rows = dict(l.split() for l in open(sys.argv[1]) if l.strip())
res, lim = float(sys.argv[2]), float(sys.argv[3])
v1, v4 = float(rows["vm1"]), float(rows["vm4"])
print(f"vm1 reservation {res:.0f}: got {v1:.0f} IOPS ({'met' if v1 >= 0.98 * res else 'NOT met'})")
print(f"vm4 limit {lim:.0f} (weight 1000): got {v4:.0f} IOPS, {100 * (v4 - lim) / lim:+.1f}% against the limit "
      f"({'within 2%' if v4 <= 1.02 * lim else 'OVER by more than 2%'})")
PY

echo
echo "== baseline: the same four clients on four qemu-nbd servers (no sharing policy)"
for i in 1 2 3 4; do
    qemu-nbd --format=raw --cache=none --aio=io_uring --shared=8 --persistent --socket="$work/q$i.sock" "$work/q$i.img" &
    pids+=($!)
done
for i in 1 2 3 4; do for _ in $(seq 100); do [ -S "$work/q$i.sock" ] && break; sleep 0.1; done; done
run_fio qemu_uri | report "1 2 3 4"
echo
echo "(fio $(fio --version), 4 KiB random reads, queue depth 32 per client; swapfair engine queue depth $qd)"
