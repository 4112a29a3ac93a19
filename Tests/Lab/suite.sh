#!/usr/bin/env bash
# The real-kernel tests: builds swapfair (release), then
#   1. one guest: the capability check, the kernel NBD client swapping to a swapfair export
#      (swapdev.sh), the host's swap served over ublk (ublk.sh), a VM's swap volume as a ublk block device
#      (vmblock.sh), the controller's end-to-end scenarios (scenarios.py [SCENARIO...]) and the
#      double-paging measurement (double_paging.py; named "double_paging" among the scenarios);
#   2. a second guest whose swap disk is an export of a swapfaird on this host, killed and
#      restarted midway (guest-swap.sh; skipped when scenarios are named);
#   3. a QEMU guest with a virtio-balloon device whose balloon swapfairctl sets over QMP (balloon.sh);
#   4. a guest booted by systemd as PID 1: the units installed, limits set through systemd,
#      daemon-reload, a VM unit restart and a watchdog restart (systemd_lab.py; skipped likewise).
# Guests 2-4 run one after another beside the first guest's functional checks (1's capability check,
# swap over NBD and ublk, the VM volume: pass or fail, not timed), on the host's second core; the
# first guest waits for them before the scenarios and the double-paging runs, which are judged by
# time and rate and so run alone. Their output is printed after the first guest's.
# Every check prints a PASS: or FAIL: line; the last line is "lab: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
echo "lab: building swapfair (release) for the guest"
swift build -c release 2>&1 | grep -E "error|complete" || true
[ -x .build/release/swapfaird ] && [ -x .build/release/swapfair-loadgen ] && [ -x .build/release/swapfair-guestpager ] || { echo "lab: 0 passed, 1 failed (build)"; exit 1; }
export LAB_OUT=${LAB_OUT:-$PWD/lab-runs/latest}
rm -rf "$LAB_OUT"; mkdir -p "$LAB_OUT"
# double_paging (Tests/Lab/double_paging.py) runs after the controller's scenarios, or alone when named alone.
scenarios=""; dp=1
[ $# -gt 0 ] && dp=0
for a in "$@"; do
    if [ "$a" = double_paging ]; then dp=1; else scenarios="$scenarios $a"; fi
done
scenarios=${scenarios# }
run_scenarios=1
[ $# -gt 0 ] && [ -z "$scenarios" ] && run_scenarios=0
# The other guests (full run only), in the background; "side-done" in LAB_OUT tells the first
# guest (through the shared directory) that they have finished.
side_guests() {
    echo; echo "=== a guest swaps to swapfair on the host; the daemon is SIGKILLed and restarted midway ==="
    Tests/Lab/guest-swap.sh 2>&1 | grep -vE "^(lab:|\[ )" > "$LAB_OUT/guest2.log"
    cat "$LAB_OUT/guest2.log"
    echo; echo "=== swapfair's QMP client sets a real QEMU guest's balloon ==="
    Tests/Lab/balloon.sh 2>&1 | grep -vE "^(lab:|\[ )" > "$LAB_OUT/guest4.log"
    cat "$LAB_OUT/guest4.log"
    echo; echo "=== swapfair under systemd as PID 1 ==="
    LAB_INIT=systemd LAB_SWAP=disk:2G LAB_TIMEOUT=900 LAB_PASS_ENV="LAB_OUT ${LAB_PASS_ENV:-}" \
        Tests/Lab/run-guest.sh . "python3 Tests/Lab/systemd_lab.py" > "$LAB_OUT/guest3.log" 2>&1
    cat "$LAB_OUT/guest3.log"
}
wait_side=":"
if [ $# = 0 ]; then
    { side_guests > "$LAB_OUT/side.log" 2>&1; touch "$LAB_OUT/side-done"; } &
    side=$!
    # At most 20 minutes: past that the scenarios run anyway (and the missing results fail below).
    wait_side='w=0; while [ ! -e "$LAB_OUT/side-done" ] && [ $w -lt 1200 ]; do sleep 2; w=$((w + 2)); done
        echo; echo "(waited $w s for the other guests to finish)"'
fi
# The double-paging runs have two disks of their own: the guest's swap on the second (a file in
# (a), swapfair's volume in (b), (c)) and the host's on the third, both with a latency as a real
# disk's weighs against the lab's emulated CPU (see the README); the other tests keep a swap disk
# with none.
LAB_SWAP=${LAB_SWAP:-disk:2G} LAB_DISK2=${LAB_DISK2:-1G} LAB_DISK3=${LAB_DISK3:-1G} LAB_DISKS_DELAY=${LAB_DISKS_DELAY:-1ms} \
    LAB_TIMEOUT=${LAB_TIMEOUT:-2400} LAB_PASS_ENV="LAB_OUT ${LAB_PASS_ENV:-}" \
    Tests/Lab/run-guest.sh . "bash Tests/Lab/check.sh 2>&1 | sed -u 's/^/check: /'
        echo; echo '=== the kernel nbd client swaps to a swapfair export ==='
        bash Tests/Lab/swapdev.sh 2>&1 | grep --line-buffered -vE '^(Setting up|no label)'
        echo; echo '=== the host swaps to swapfaird over ublk ==='
        bash Tests/Lab/ublk.sh 2>&1 | grep --line-buffered -vE '^(Setting up|no label)'
        echo; echo '=== a VM swap volume served as a ublk block device ==='
        bash Tests/Lab/vmblock.sh 2>&1 | grep --line-buffered -vE '^(Setting up|no label)'
        $wait_side
        if [ $run_scenarios = 1 ]; then python3 Tests/Lab/scenarios.py $scenarios; fi
        if [ $dp = 1 ]; then python3 Tests/Lab/double_paging.py; fi" 2>&1 | tee "$LAB_OUT/guest1.log"
if [ $# = 0 ]; then
    wait $side
    cat "$LAB_OUT/side.log"
    grep -aqE "^balloon: [0-9]+ passed" "$LAB_OUT/guest4.log" || failed_early=1
    grep -aqE "^systemd: [0-9]+ passed" "$LAB_OUT/guest3.log" || failed_early=1
fi
passed=$(cat "$LAB_OUT"/guest*.log | grep -acE "(^|: )PASS:")
failed=$(cat "$LAB_OUT"/guest*.log | grep -acE "(^|: )FAIL:")
# A guest that died before printing its checks is a failure too.
[ $run_scenarios = 1 ] && { grep -aqE "^scenarios: [0-9]+ passed" "$LAB_OUT/guest1.log" || failed=$((failed + 1)); }
grep -aqE "^ublk: [0-9]+ passed" "$LAB_OUT/guest1.log" || failed=$((failed + 1))
[ $dp = 1 ] && { grep -aqE "^double_paging: [0-9]+ passed" "$LAB_OUT/guest1.log" || failed=$((failed + 1)); }
[ -n "${failed_early:-}" ] && failed=$((failed + 1))
echo "lab: figures, logs and time series are in $LAB_OUT"
echo "lab: $passed passed, $failed failed"
[ "$failed" = 0 ]
