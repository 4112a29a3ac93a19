#!/bin/bash
# Inside the lab guest: the host's swap served by swapfaird over ublk. swapfaird serves
# host_swap_size as /dev/ublkbN (--swap-only); fio writes and verifies it; it becomes the only swap
# and a stand-in under memory.high is pushed into it and checks every page; then the whole guest is
# pushed to the edge of OOM with no cgroup limit, so that the kernel swaps through the daemon while
# memory is short (a server that needed memory to make progress would deadlock here). Prints
# PASS/FAIL lines; the last line is "ublk: N passed, M failed".
set -u
cd "$(dirname "$0")/../.."
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=${LAB_OUT:-/tmp}/ublk
mkdir -p "$OUT"
. Tests/Lab/checks.sh ublk
# What the kernel's blocked tasks wait on (sysrq w), for a run that hangs.
blocked() {
    echo w > /proc/sysrq-trigger 2>/dev/null; sleep 1
    dmesg | grep -A14 -E "task:.*state:D" | grep -vE "^\s*$" | head -80 | sed 's/^/blocked: /'
}
# Runs a command for at most $1 s; a process stuck in the kernel ignores timeout's signals, so on
# expiry this returns 124 without waiting for it (and shows where it is stuck).
bounded() {
    local limit=$1; shift
    "$@" & local p=$! t=0
    while kill -0 $p 2>/dev/null; do
        [ $t -ge $((limit * 5)) ] && { blocked; kill -9 $p 2>/dev/null; return 124; }
        sleep 0.2; t=$((t + 1))
    done
    wait $p
}
# The volume is the lab's swap disk itself, borrowed whole (made swap again at the end): a host
# swap volume must be a block device, not a file on a journaling file system, or reclaim can wait
# on the journal that waits on memory (a file on ext4 here hung kswapd and jbd2 once near OOM).
disk=$(swapon --show=NAME --noheadings | grep '^/dev/vd' | head -1)
[ -n "$disk" ] || { ko "no swap disk to borrow (LAB_SWAP=disk:SIZE)"; finish; }
swapoff -a
restore() { mkswap "$disk" > /dev/null && swapon "$disk"; }
trap restore EXIT
modprobe ublk_drv 2>/dev/null
mkdir -p /tmp/ublk-state
cat > "$OUT/swapfair.toml" <<TOML
[host]
state_dir = "/tmp/ublk-state"
nbd_dir = "/run/swapfair/nbd"
host_swap_device = "$disk"
TOML
"$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket /run/swapfair/ublk.sock --swap-only > "$OUT/daemon.log" 2>&1 &
daemon=$!
dev=""
for _ in $(seq 100); do
    dev=$(grep -o 'device=/dev/ublkb[0-9]*' "$OUT/daemon.log" | head -1 | cut -d= -f2)
    [ -n "$dev" ] && break
    kill -0 $daemon 2>/dev/null || break
    sleep 0.1
done
if [ -n "$dev" ] && [ -b "$dev" ]; then
    ok "swapfaird serves the host swap device $dev ($(blockdev --getsize64 "$dev") bytes, $(blockdev --getss "$dev")-byte sectors)"
else
    ko "no ublk device: $(tail -3 "$OUT/daemon.log")"; finish
fi
# The kernel reads swap back by slot clusters from a rotational device and along each address
# space from the others: the device must say what the disk under its volume says.
under=$(cat "/sys/block/${disk#/dev/}/queue/rotational"); says=$(cat "/sys/block/${dev#/dev/}/queue/rotational")
[ "$under" = "$says" ] && ok "$dev is as rotational as $disk under it (rotational=$says)" \
    || ko "$dev says rotational=$says, its volume's disk $disk says $under"

# Data integrity: random 4 KiB writes at depth 32, then 64 KiB sequential, each verified on read-back.
for job in "randwrite 4k 32" "write 64k 8"; do
    set -- $job
    if fio --name=verify --filename="$dev" --rw=$1 --bs=$2 --iodepth=$3 --ioengine=io_uring --direct=1 --size=128M \
           --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=terse > "$OUT/fio-$1.txt" 2>&1; then
        ok "fio $1 $2 at depth $3 over 128 MiB: every block read back as written"
    else
        ko "fio $1 $2 verify: $(tail -3 "$OUT/fio-$1.txt")"
    fi
done

if ! { mkswap "$dev" > /dev/null && swapon "$dev"; }; then ko "swapon $dev"; finish; fi
ok "swapon $dev: $(grep "^$dev" /proc/swaps | tr -s ' \t' ' ')"

# A stand-in pushed into it by its cgroup's memory.high.
G=/sys/fs/cgroup/ublk-standin
mkdir -p $G
echo 64M > $G/memory.high
bounded 600 sh -c "echo \$\$ > $G/cgroup.procs; exec $BIN/swapfair-loadgen --memory 256M --working-set 256M --phases busy:8 --verify --output $OUT/standin.jsonl"
rc=$?
peak=$(grep -o '"swap":[0-9]*' "$OUT/standin.jsonl" | cut -d: -f2 | sort -n | tail -1)
[ "$rc" = 124 ] && { ko "the stand-in swapping through $dev did not finish within 600 s"; finish; }
[ "$rc" = 0 ] && ok "every page the stand-in wrote came back intact through swap on $dev ($((${peak:-0} >> 20)) MiB in swap at its peak)" \
    || ko "stand-in verification failed (rc=$rc)"
rmdir $G

# SIGKILL under swap: the kernel holds the device's I/O (user recovery) until the restarted
# daemon takes it over; the stand-in swapping through it must not see a single bad page.
G=/sys/fs/cgroup/ublk-kill
mkdir -p $G
echo 64M > $G/memory.high
timeout 600 sh -c "echo \$\$ > $G/cgroup.procs; exec $BIN/swapfair-loadgen --memory 256M --working-set 256M --phases busy:12 --verify --output $OUT/kill-standin.jsonl" &
standin=$!
sleep 8
inswap=$(awk -v d="$dev" '$1 == d {print int($4 / 1024)}' /proc/swaps)
kill -9 $daemon; wait $daemon 2>/dev/null
# Restarted at once, as systemd's Restart= would: the kernel may not have seen the death yet.
sleep "${UBLK_RESTART_DELAY:-0}"
# A log of its own: lines a restarted daemon appended to the first one's log on the lab's 9p
# share went missing now and then, always its first ones, the take-over line among them.
log="$OUT/daemon.after-restart.log"
"$BIN/swapfaird" --config "$OUT/swapfair.toml" --socket /run/swapfair/ublk.sock --swap-only > "$log" 2>&1 &
daemon=$!
# If nothing takes the device over, the stand-in waits on its held I/O forever: say so and stop here
# rather than hang the lab.
t0=$(date +%s)
while ! grep -q "taken over from the previous daemon" "$log"; do
    if ! kill -0 $daemon 2>/dev/null || [ $(($(date +%s) - t0)) -gt 90 ]; then
        ko "the restarted swapfaird did not take $dev over; the stand-in's swap I/O stays held: $(tail -3 "$log")"
        cat /sys/block/$(basename "$dev")/inflight 2>/dev/null | sed 's/^/inflight: /'
        blocked
        finish
    fi
    sleep 0.2
done
echo "take-over $(($(date +%s) - t0)) s after the restart"
t=0
while kill -0 $standin 2>/dev/null && [ $t -lt 3000 ]; do sleep 0.2; t=$((t + 1)); done
if kill -0 $standin 2>/dev/null; then blocked; rc=124; else wait $standin; rc=$?; fi
echo "SIGKILL with ${inswap:-0} MiB on $dev; $(grep -c 'taken over' "$log") take-over(s) logged"
grep -q "taken over from the previous daemon" "$log" && ok "the restarted swapfaird took $dev over" \
    || ko "no take-over: $(tail -3 "$log")"
[ "$rc" = 0 ] && ok "the stand-in swapping through $dev across SIGKILL and restart read every page back intact" \
    || ko "the stand-in failed across the restart (rc=$rc): $(tail -2 $OUT/kill-standin.jsonl)"
grep -q "^$dev" /proc/swaps && ok "$dev is still in use as swap after the restart" || ko "$dev is no longer swap"
[ "$rc" = 124 ] && finish
rmdir $G

# The whole guest near OOM: no cgroup limit, all of its available memory and 600 MiB more (how much
# of that the kernel takes from the page cache rather than swap varies: with 400 MiB more, 101 to
# 383 MiB went to swap).
ram=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
ask=$((ram + 600))
t0=$(date +%s)
bounded 600 "$BIN/swapfair-loadgen" --memory ${ask}M --working-set ${ask}M --phases busy:5 --verify \
    --output /tmp/ublk-oom.jsonl > /dev/null 2> "$OUT/oom.err"
rc=$?
t1=$(date +%s)
cp /tmp/ublk-oom.jsonl "$OUT/oom.jsonl" 2>/dev/null
peak=$(grep -o '"swap":[0-9]*' /tmp/ublk-oom.jsonl 2>/dev/null | cut -d: -f2 | sort -n | tail -1)
used=$(awk -v d="$dev" '$1 == d {print int($4 / 1024)}' /proc/swaps)
echo "near OOM: ${ask} MiB asked with ${ram} MiB available; exit status $rc after $((t1 - t0)) s; stand-in swap peak $((${peak:-0} >> 20)) MiB"
if [ "$rc" = 124 ]; then
    ko "near OOM: the stand-in did not finish within 600 s (a swap server that needs memory deadlocks here)"
    finish
elif [ "$rc" = 0 ] && [ "${peak:-0}" -lt $((64 << 20)) ]; then
    ko "near OOM: the stand-in was not pushed into swap (peak $((${peak:-0} >> 20)) MiB); the run shows nothing"
elif [ "$rc" = 0 ]; then
    ok "near OOM: the guest swapped $((${peak:-0} >> 20)) MiB through $dev and every page came back intact ($((t1 - t0)) s)"
else
    # The OOM killer may take the stand-in; what must not happen is a hang.
    ok "near OOM: no deadlock; the stand-in ended with status $rc after $((t1 - t0)) s ($(dmesg | grep -c 'Out of memory') OOM kills)"
fi
kill -0 $daemon 2>/dev/null && ok "swapfaird is alive after the near-OOM run" || ko "swapfaird died: $(tail -3 "$log")"

# SIGTERM: the daemon takes its device out of use before it stops it.
kill $daemon; wait $daemon 2>/dev/null
if grep -q "swapoff" "$log" && ! grep -q "^$dev" /proc/swaps && [ ! -b "$dev" ]; then
    ok "on SIGTERM swapfaird swapped $dev off and removed it"
else
    ko "after SIGTERM: $(grep "^$dev" /proc/swaps) $(ls -l "$dev" 2>&1) $(tail -2 "$log")"
fi
finish
