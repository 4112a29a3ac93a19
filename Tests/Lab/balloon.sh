#!/bin/bash
# On the host: swapfair's QMP client against a real QEMU guest (the lab kernel, TCG) with a
# virtio-balloon device and a QMP socket. swapfairctl asks the balloon to leave the guest less RAM;
# QEMU's query-balloon must report it and the guest must see its memory shrink. Prints PASS/FAIL
# lines; the last line is "balloon: N passed, M failed".
set -u
cd "$(dirname "$0")/../.."
BIN=${SWAPFAIR_BIN:-$PWD/.build/release}
OUT=${LAB_OUT:-/tmp}/balloon
mkdir -p "$OUT"
. Tests/Lab/checks.sh balloon
qmp=$(mktemp -u /tmp/swapfair-balloon.XXXXXX.qmp)
guest_log="$OUT/guest.log"
# The guest watches its MemTotal until it has dropped by 320 MiB (or 120 s pass), says so, and
# stays up 20 s more so that the host side can read the balloon too.
LAB_MEM=1G LAB_SWAP=none LAB_TIMEOUT=300 \
    LAB_QEMU_ARGS="-device virtio-balloon-pci,id=balloon0 -qmp unix:$qmp,server=on,wait=off" \
    Tests/Lab/run-guest.sh . 'modprobe virtio_balloon
        first=$(awk "/MemTotal/ {print \$2}" /proc/meminfo); echo "guest: ready, MemTotal $first kB"
        for i in $(seq 240); do
            now=$(awk "/MemTotal/ {print \$2}" /proc/meminfo)
            if [ $((first - now)) -gt 327680 ]; then echo "guest: MemTotal $first kB -> $now kB"; sleep 20; break; fi
            sleep 0.5
        done' > "$guest_log" 2>&1 &
lab=$!
for _ in $(seq 600); do grep -q "guest: ready" "$guest_log" 2>/dev/null && break; kill -0 $lab 2>/dev/null || break; sleep 0.2; done
if ! grep -q "guest: ready" "$guest_log"; then
    ko "the guest did not come up: $(tail -5 "$guest_log")"
    finish
fi
before=$("$BIN/swapfairctl" balloon --qmp "$qmp" 2>&1)
echo "swapfairctl: $before"
after=$("$BIN/swapfairctl" balloon --qmp "$qmp" 640M --wait 60 2>&1)
echo "swapfairctl: $after"
case "$after" in
    *"→ 640 MiB (target 640 MiB)"*) ok "query-balloon reports the target swapfair set ($after)" ;;
    *) ko "query-balloon did not reach the target: $after" ;;
esac
wait $lab
seen=$(grep "guest: MemTotal" "$guest_log")
if [ -n "$seen" ]; then
    ok "inside the guest the memory shrank (${seen#guest: })"
else
    ko "the guest did not see its memory shrink: $(grep guest: "$guest_log" | tail -3)"
fi
bad=$("$BIN/swapfairctl" balloon --qmp /nonexistent.qmp 1G 2>&1)
case "$bad" in
    *"cannot connect to the QMP socket /nonexistent.qmp"*) ok "a missing QMP socket is named: $bad" ;;
    *) ko "a missing QMP socket: $bad" ;;
esac
rm -f "$qmp"
finish
