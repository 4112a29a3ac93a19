#!/usr/bin/env bash
# A whole guest swapping to swapfair: swapfaird runs on this host (--swap-only, no cgroups needed)
# and serves a volume; the lab guest boots with that export as its only swap disk (QEMU's NBD
# client, with reconnect-delay); inside, a stand-in under memory.high=64M is pushed into swap and
# checks every page at the end. Midway, swapfaird is killed with SIGKILL and restarted: the guest
# must see no I/O error and lose nothing. Prints PASS/FAIL lines and "guest-swap: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
export BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
export OUT=${LAB_OUT:-$PWD/lab-runs/latest}/guest-swap
rm -rf "$OUT"; mkdir -p "$OUT"
. Tests/Lab/checks.sh guest-swap
cat > "$OUT/swapfair.toml" <<TOML
[host]
state_dir = "$OUT/state"
nbd_dir = "$OUT/nbd"
[[vm]]
name = "lab"
swap_device = { size = "1G" }
TOML
start() { "$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket "$OUT/ctl.sock" --swap-only >> "$OUT/daemon.log" 2>&1 & daemon=$!;
          for _ in $(seq 100); do [ -S "$OUT/nbd/lab.sock" ] && break; sleep 0.1; done; }
start
cat > "$OUT/inside.sh" <<'INSIDE'
set -u
modprobe virtio_blk; for _ in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mkswap /dev/vda >/dev/null && swapon /dev/vda || { echo "FAIL: swapon /dev/vda"; exit 1; }
echo "guest: swap on $(tail -1 /proc/swaps | tr -s ' ')"
G=/sys/fs/cgroup/standin; mkdir -p $G; echo 64M > $G/memory.high
timeout 900 sh -c "echo \$\$ > $G/cgroup.procs; exec $BIN/swapfair-loadgen --memory 256M --working-set 256M --phases busy:25 --verify --output $OUT/standin.jsonl"
echo "guest: stand-in exit status $?"
echo "guest: block layer errors: $(dmesg | grep -ci 'I/O error')"
INSIDE
drive="driver=raw,if=virtio,cache=none,file.driver=nbd,file.server.type=unix,file.server.path=$OUT/nbd/lab.sock,file.export=lab,file.reconnect-delay=60"
LAB_SWAP=none LAB_MEM=1G LAB_QEMU_ARGS="-drive $drive" LAB_PASS_ENV="OUT BIN" LAB_TIMEOUT=1200 \
    Tests/Lab/run-guest.sh . bash "$OUT/inside.sh" > "$OUT/guest.log" 2>&1 &
guest=$!
# Wait until the stand-in is in swap, then kill the daemon under it and start it again.
for _ in $(seq 600); do
    grep -q '"phase":"busy"' "$OUT/standin.jsonl" 2>/dev/null && break
    kill -0 "$guest" 2>/dev/null || break
    sleep 0.5
done
sleep 3
before=$(grep -o '"swap":[0-9]*' "$OUT/standin.jsonl" | tail -1 | cut -d: -f2)
kill -9 "$daemon"; wait "$daemon" 2>/dev/null
echo "swapfaird killed with SIGKILL while the guest had $(( ${before:-0} >> 20 )) MiB in swap; restarting in 1 s"
sleep 1
start
wait "$guest"; grc=$?
cat "$OUT/guest.log" | grep -E "^guest:|FAIL" || true
verify=$(grep '"event":"verify"' "$OUT/standin.jsonl")
echo "stand-in: $verify"
peak=$(grep -o '"swap":[0-9]*' "$OUT/standin.jsonl" | cut -d: -f2 | sort -n | tail -1)
[ "$grc" = 0 ] && grep -q "stand-in exit status 0" "$OUT/guest.log" \
    && ok "every page came back intact across the daemon's SIGKILL and restart (${peak:-0} bytes in swap at the peak)" \
    || ko "the stand-in's pages did not all come back (guest rc=$grc): $(tail -5 "$OUT/guest.log")"
grep -q "block layer errors: 0" "$OUT/guest.log" && ok "the guest saw no I/O error" || ko "the guest saw I/O errors"
[ "${peak:-0}" -gt $((128 << 20)) ] && ok "the guest really swapped to the export ($(( peak >> 20 )) MiB)" || ko "too little swap used"
[ "$(grep -c 'swap device ready' "$OUT/daemon.log")" = 2 ] && ok "swapfaird served the same volume after its restart" || ko "restart"
kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null
finish
