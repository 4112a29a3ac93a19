#!/bin/bash
# Inside the lab guest: the kernel's own NBD client swaps to a swapfair export. swapfaird serves a
# volume (--swap-only), nbd-client attaches it as /dev/nbd0 over the Unix socket, it becomes the
# only swap device, and a stand-in under memory.high=64M is pushed into it; at the end the stand-in
# checks every page it wrote. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=${LAB_OUT:-/tmp}/swapdev
mkdir -p "$OUT"
. Tests/Lab/checks.sh swapdev
# nbd0 is to be the only swap; the guest's own swap comes back at the end.
swap_aside
cat > "$OUT/swapfair.toml" <<TOML
[host]
state_dir = "/tmp/swapdev-state"
nbd_dir = "/run/swapfair/nbd"
[[vm]]
name = "guest"
swap_device = { size = "512M" }
TOML
"$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket /run/swapfair/ctl.sock --swap-only > "$OUT/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S /run/swapfair/nbd/guest.sock ] && break; sleep 0.1; done
modprobe nbd
if nbd-client -u -N guest /run/swapfair/nbd/guest.sock /dev/nbd0 -b 4096 -swap > "$OUT/nbd-client.log" 2>&1; then
    ok "the kernel's nbd client attached the export as /dev/nbd0 ($(blockdev --getsize64 /dev/nbd0) bytes)"
else
    ko "nbd-client failed: $(cat "$OUT/nbd-client.log")"
fi
if ! { mkswap /dev/nbd0 > /dev/null && swapon /dev/nbd0; }; then
    ko "swapon /dev/nbd0"; cat "$OUT/daemon.log"
    finish
fi
ok "swapon /dev/nbd0: $(tail -1 /proc/swaps | tr -s ' ')"
G=/sys/fs/cgroup/swapdev
mkdir -p $G
echo 64M > $G/memory.high
echo 1G > $G/memory.max
t0=$(date +%s.%N)
timeout 600 sh -c "echo \$\$ > $G/cgroup.procs; exec $BIN/swapfair-loadgen --memory 256M --working-set 256M --phases busy:8 --verify --output $OUT/standin.jsonl"
rc=$?
t1=$(date +%s.%N)
peak=$(grep -o '"swap":[0-9]*' "$OUT/standin.jsonl" | cut -d: -f2 | sort -n | tail -1)
verify=$(grep '"event":"verify"' "$OUT/standin.jsonl")
echo "stand-in: $verify"
[ "$rc" = 0 ] && ok "every page the stand-in wrote came back intact through swap on nbd0 (rc=$rc, $(echo "$t1 - $t0" | bc) s)" \
    || ko "stand-in verification failed (rc=$rc)"
[ "${peak:-0}" -gt $((128 << 20)) ] && ok "the stand-in had $((peak >> 20)) MiB in swap at its peak" || ko "too little went to swap (${peak:-0} bytes)"
stats=$("$BIN/swapfairctl" status --json --socket /run/swapfair/ctl.sock)
writes=$(echo "$stats" | grep -o '"write_bytes" : [0-9]*' | grep -o '[0-9]*$')
reads=$(echo "$stats" | grep -o '"read_bytes" : [0-9]*' | grep -o '[0-9]*$')
echo "swapfaird served: $((${writes:-0} >> 20)) MiB written, $((${reads:-0} >> 20)) MiB read"
[ "${writes:-0}" -gt $((128 << 20)) ] && ok "swapfaird served the swap-out ($((writes >> 20)) MiB)" || ko "swapfaird saw too few writes"
grep -q "oom_kill 0" $G/memory.events && ok "no OOM kill" || ko "OOM kill: $(cat $G/memory.events | tr '\n' ' ')"
rmdir $G
swapoff /dev/nbd0
nbd-client -d /dev/nbd0 > /dev/null 2>&1
kill $daemon; wait $daemon 2>/dev/null
finish
