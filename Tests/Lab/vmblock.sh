#!/bin/bash
# Inside the lab guest: a VM's swap volume served as a ublk block device (`ublk = true`), the way a
# VMM that opens a host block device reaches it. swapfaird serves it (--swap-only); its node belongs
# to the VM's user; fio writes and verifies it; it becomes the only swap and a stand-in swapping
# through it sees the daemon SIGKILLed and restarted, then stopped (SIGTERM) and started again, and
# must read every page back intact. Last, a daemon whose configuration no longer has the device
# removes it. Prints PASS/FAIL lines; the last line is "vmblock: N passed, M failed".
set -u
cd "$(dirname "$0")/../.."
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=${LAB_OUT:-/tmp}/vmblock
mkdir -p "$OUT"
. Tests/Lab/checks.sh vmblock
swap_aside
modprobe ublk_drv 2>/dev/null
rm -rf /tmp/vmblock-state
conf() {  # conf UBLK: the VM's volume, with or without its block device
    cat > "$OUT/swapfair.toml" <<TOML
[host]
state_dir = "/tmp/vmblock-state"
nbd_dir = "/run/swapfair/nbd"
[[vm]]
name = "guest"
swap_device = { size = "512M", users = ["65534"], ublk = $1 }
TOML
}
n=0
start() {  # a daemon with a log of its own each time (appends to one log on the 9p share went missing)
    n=$((n + 1)); log="$OUT/daemon.$n.log"
    "$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket /run/swapfair/vmblock.sock --swap-only > "$log" 2>&1 &
    daemon=$!
}
wait_log() {  # wait_log WORDS SECONDS: true once the current log has the words
    local t=0
    until grep -q "$1" "$log"; do
        kill -0 $daemon 2>/dev/null && [ $t -lt $(($2 * 5)) ] || return 1
        sleep 0.2; t=$((t + 1))
    done
}
conf true
start
wait_log "VM swap block device ready" 30 || { ko "no block device: $(tail -3 "$log")"; finish; }
dev=$(grep -o 'device=/dev/ublkb[0-9]*' "$log" | head -1 | cut -d= -f2)
[ -b "$dev" ] && ok "swapfaird serves the VM's volume as $dev ($(blockdev --getsize64 "$dev") bytes, $(blockdev --getss "$dev")-byte sectors)" \
    || { ko "$dev is not a block device"; finish; }
[ "$(readlink /run/swapfair/nbd/guest.ublk)" = "$dev" ] && ok "/run/swapfair/nbd/guest.ublk names it for the VM's unit" \
    || ko "/run/swapfair/nbd/guest.ublk is $(readlink /run/swapfair/nbd/guest.ublk 2>&1), not $dev"
owner=$(stat -c '%u:%g %a' "$dev")
[ "$owner" = "65534:0 660" ] && ok "$dev belongs to the VM's user (uid:gid mode $owner)" || ko "$dev is $owner, not 65534:0 660"
if setpriv --reuid=65534 --regid=65534 --clear-groups dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null \
   && ! setpriv --reuid=65533 --regid=65533 --clear-groups dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then
    ok "the VM's user opens $dev and another user cannot"
else
    ko "access to $dev is not the VM user's alone"
fi
status=$("$BIN/swapfairctl" status --json --socket /run/swapfair/vmblock.sock)
echo "$status" | tr -d '\\' | grep -q "\"block_device\" : \"$dev\"" && ok "swapfairctl status names $dev" \
    || ko "status does not name $dev: $(echo "$status" | grep -o '"block_device[^,]*')"

if fio --name=verify --filename="$dev" --rw=randwrite --bs=4k --iodepth=32 --ioengine=io_uring --direct=1 --size=128M \
       --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=terse > "$OUT/fio.txt" 2>&1; then
    ok "fio randwrite 4k at depth 32 over 128 MiB: every block read back as written"
else
    ko "fio verify: $(tail -3 "$OUT/fio.txt")"
fi
if ! { mkswap "$dev" > /dev/null && swapon "$dev"; }; then ko "swapon $dev"; finish; fi
ok "swapon $dev: $(grep "^$dev" /proc/swaps | tr -s ' \t' ' ')"

# A stand-in pushed into it; the daemon SIGKILLed, restarted, stopped and started again under it.
G=/sys/fs/cgroup/vmblock
mkdir -p $G
echo 64M > $G/memory.high
timeout 900 sh -c "echo \$\$ > $G/cgroup.procs; exec $BIN/swapfair-loadgen --memory 256M --working-set 256M --phases busy:16 --verify --output $OUT/standin.jsonl" &
standin=$!
sleep 8
for how in KILL TERM; do
    inswap=$(awk -v d="$dev" '$1 == d {print int($4 / 1024)}' /proc/swaps)
    kill -$how $daemon; wait $daemon 2>/dev/null
    start
    t0=$(date +%s)
    if wait_log "taken over from the previous daemon" 90; then
        ok "after SIG$how with ${inswap:-0} MiB in swap on $dev, the next daemon took it over ($(($(date +%s) - t0)) s after its start)"
    else
        ko "after SIG$how the next daemon did not take $dev over: $(tail -3 "$log")"
        kill -9 $standin 2>/dev/null
        finish
    fi
    sleep 5
done
t=0
while kill -0 $standin 2>/dev/null && [ $t -lt 3000 ]; do sleep 0.2; t=$((t + 1)); done
if kill -0 $standin 2>/dev/null; then rc=124; kill -9 $standin; else wait $standin; rc=$?; fi
peak=$(grep -o '"swap":[0-9]*' "$OUT/standin.jsonl" | cut -d: -f2 | sort -n | tail -1)
[ "$rc" = 0 ] && ok "the stand-in read every page back intact across both restarts ($((${peak:-0} >> 20)) MiB in swap at its peak)" \
    || ko "the stand-in failed across the restarts (rc=$rc): $(tail -2 "$OUT/standin.jsonl")"
[ "${peak:-0}" -gt $((96 << 20)) ] || ko "too little went to swap (${peak:-0} bytes): the run shows nothing"
grep -q "oom_kill 0" $G/memory.events && ok "no OOM kill" || ko "OOM kill: $(tr '\n' ' ' < $G/memory.events)"
rmdir $G

# The device out of use and out of the configuration: the next daemon removes it.
swapoff "$dev"
kill $daemon; wait $daemon 2>/dev/null
conf false
start
if wait_log "removed the ublk device of a VM no longer served over ublk" 60 && [ ! -b "$dev" ] \
   && [ ! -e /run/swapfair/nbd/guest.ublk ]; then
    ok "a daemon whose configuration no longer has the device removed $dev and its link"
else
    ko "$dev was not removed: $(ls -l "$dev" 2>&1) $(tail -2 "$log")"
fi
kill $daemon; wait $daemon 2>/dev/null
finish
