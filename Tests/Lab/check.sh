#!/bin/bash
# Capability check of the lab guest: does its kernel give swapfair what swapfair relies on?
#
#   Tests/Lab/run-guest.sh . bash Tests/Lab/check.sh
#
# Prints PASS/FAIL lines and ends with "N passed, M failed"; exit status 0 when all passed.
# It creates cgroups and runs a memory hog, so it refuses to run anywhere but in the guest.
set -u
if ! grep -qw swapfair_lab=1 /proc/cmdline; then
    echo "check.sh: runs only inside the lab guest: Tests/Lab/run-guest.sh . bash Tests/Lab/check.sh" >&2
    exit 2
fi

CG=/sys/fs/cgroup
HOG=${SWAPFAIR_LAB_DIR:-$HOME/.cache/swapfair-lab}/bin/memhog
HOG_MIB=256
HIGH_MIB=64
pass=0; fail=0
ok()  { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
mib() { echo $(( $1 / 1048576 )); }
field() { awk -v k="$1" '$1 == k {print $2}' "$2"; }   # value of key K in a flat-keyed file
has() { case "$1" in *"$2"*) true ;; *) false ;; esac; }      # has STRING PART
loads() { modprobe "$1" && [ -e "$2" ]; }                        # loads MODULE DEVICE

echo "kernel $(uname -r); $(nproc) CPUs; $(awk '/MemTotal/ {print $2 / 1024 " MiB"}' /proc/meminfo) RAM;" \
     "command started at uptime $(uptime_s)s"

# ---- cgroup v2 as swapfair expects it ----
opts=$(awk -v m=$CG '$2 == m && $3 == "cgroup2" {print $4}' /proc/mounts)
check "cgroup2 mounted at $CG (options: ${opts:-none})" [ -n "$opts" ]
check "cgroup2 mounted with nsdelegate" has ",$opts," ,nsdelegate,
check "cgroup2 mounted with memory_recursiveprot" has ",$opts," ,memory_recursiveprot,
subtree=" $(cat $CG/cgroup.subtree_control) "
for c in memory io cpu pids; do
    check "controller $c enabled in the root's cgroup.subtree_control" has "$subtree" " $c "
done
check "PSI on (/proc/pressure/memory: $(head -n1 /proc/pressure/memory 2>&1))" [ -r /proc/pressure/memory ]

swaps=$(tail -n +2 /proc/swaps)
check "swap active: $(echo "$swaps" | awk '{printf "%s (%s, %d MiB) ", $1, $2, $3 / 1024}')" [ -n "$swaps" ]

# ---- a cgroup with the files swapfair writes and reads ----
T=$CG/lab-check.$$
hog=""
cleanup() {
    [ -n "$hog" ] && kill "$hog" 2>/dev/null && wait "$hog" 2>/dev/null
    [ -d "$T" ] && rmdir "$T"
}
trap cleanup EXIT
mkdir "$T"
missing=""
for f in memory.min memory.low memory.high memory.max memory.swap.max memory.swap.high \
         memory.swap.current memory.reclaim memory.peak memory.events memory.stat memory.pressure \
         io.weight io.stat io.pressure cpu.weight; do
    [ -e "$T/$f" ] || missing="$missing $f"
done
check "child cgroup has the memory, io and cpu interface files${missing:+ (missing:$missing)}" [ -z "$missing" ]

# ---- memory.high pushes a process's memory out to swap ----
echo ${HIGH_MIB}M > "$T/memory.high"
echo max > "$T/memory.swap.max"
ready=/tmp/memhog.ready.$$
t0=$(uptime_s)
sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$T" "$HOG" $HOG_MIB "$ready" &
hog=$!
for _ in $(seq 600); do    # up to 5 minutes: the hog is slow under emulation
    [ -e "$ready" ] && break
    kill -0 $hog 2>/dev/null || break
    sleep 0.5
done
t1=$(uptime_s)
cur=$(cat "$T/memory.current"); swp=$(cat "$T/memory.swap.current")
high_ev=$(field high "$T/memory.events"); oom_ev=$(field oom_kill "$T/memory.events")
echo "hog: ${HOG_MIB} MiB under memory.high=${HIGH_MIB}M took $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')s;" \
     "memory.current=$(mib "$cur") MiB memory.swap.current=$(mib "$swp") MiB high events=$high_ev oom_kill=$oom_ev"
hog_holds() { [ -e "$ready" ] && kill -0 "$hog" 2>/dev/null && [ "$oom_ev" = 0 ]; }
check "${HOG_MIB} MiB hog is alive and holding its memory (no OOM kill)" hog_holds
check "memory.high kept the hog at $(mib "$cur") MiB resident (limit ${HIGH_MIB} MiB + 16 MiB slack)" \
    [ "$cur" -le $(( (HIGH_MIB + 16) * 1048576 )) ]
check "the rest went to swap: memory.swap.current=$(mib "$swp") MiB (want >= $((HOG_MIB - HIGH_MIB - 32)) MiB)" \
    [ "$swp" -ge $(( (HOG_MIB - HIGH_MIB - 32) * 1048576 )) ]
stall=$(awk '$1 == "some" {for (i = 2; i <= NF; i++) if ($i ~ /^total=/) print substr($i, 7)}' "$T/memory.pressure")
check "memory.pressure of the cgroup recorded the reclaim stalls (some total=${stall:-?} us)" [ "${stall:-0}" -gt 0 ]

before=$(cat "$T/memory.current")
if echo 32M > "$T/memory.reclaim"; then
    after=$(cat "$T/memory.current")
    check "memory.reclaim of 32M took memory.current from $(mib "$before") to $(mib "$after") MiB" \
        [ "$after" -lt "$before" ]
else
    bad "memory.reclaim refused a request for 32M"
fi
kill $hog; wait $hog 2>/dev/null; hog=""; rm -f "$ready"

# ---- block-device modules a later swapfair may serve swap through ----
check "ublk_drv loads (/dev/ublk-control)" loads ublk_drv /dev/ublk-control
check "nbd loads (/dev/nbd0)" loads nbd /dev/nbd0

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
