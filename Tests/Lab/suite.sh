#!/usr/bin/env bash
# The real-kernel tests: builds swapfair (release), boots the lab guest once, runs the capability
# check and the end-to-end scenarios in it, and ends with "lab: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
echo "lab: building swapfair (release) for the guest"
swift build -c release 2>&1 | grep -E "error|Build complete" || true
[ -x .build/release/swapfaird ] && [ -x .build/release/swapfair-loadgen ] || { echo "lab: 0 passed, 1 failed (build)"; exit 1; }
export LAB_OUT=${LAB_OUT:-$PWD/lab-runs/latest}
rm -rf "$LAB_OUT"; mkdir -p "$LAB_OUT"
LAB_SWAP=${LAB_SWAP:-disk:2G} LAB_TIMEOUT=${LAB_TIMEOUT:-1500} LAB_PASS_ENV="LAB_OUT ${LAB_PASS_ENV:-}" \
    Tests/Lab/run-guest.sh . 'bash Tests/Lab/check.sh > "$LAB_OUT/check.log" 2>&1; c=$?;
        grep -E "^(PASS|FAIL)" "$LAB_OUT/check.log" | sed "s/^/check: /";
        python3 Tests/Lab/scenarios.py '"${*:-}"'; s=$?;
        [ $c = 0 ] || echo "lab: capability check failed (see $LAB_OUT/check.log)";
        [ $c = 0 ] && [ $s = 0 ]'
rc=$?
echo "lab: figures, logs and time series are in $LAB_OUT"
exit $rc
