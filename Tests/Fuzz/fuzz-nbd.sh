#!/usr/bin/env bash
# Fuzzes the NBD codec (handshake and request decoder) with libFuzzer for a fixed time.
#   Tests/Fuzz/fuzz-nbd.sh [SECONDS]       (default 60)
# Builds with swiftc -sanitize=fuzzer,address; prints libFuzzer's summary; exits non-zero on a crash.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
out=${FUZZ_OUT:-$PWD/.build-fuzz}
mkdir -p "$out/corpus"
swiftc -sanitize=fuzzer,address -parse-as-library -O -swift-version 6 -module-name SwapfairNBD \
    Sources/SwapfairNBD/*.swift Tests/Fuzz/NBDFuzz.swift -o "$out/nbd-fuzz"
# Seeds: a valid GO handshake and a few valid requests, so mutation starts near the protocol.
python3 - "$out/corpus" <<'PY'
import struct, sys, os
d = sys.argv[1]
def chunks(b):  # the harness's framing: a length byte before every chunk (len = byte % 64 + 1)
    out = b""
    while b:
        n = min(len(b), 64); out += bytes([n - 1]) + b[:n]; b = b[n:]
    return out
opt = lambda code, data: struct.pack(">QII", 0x49484156454F5054, code, len(data)) + data
go = struct.pack(">I", 3) + opt(7, struct.pack(">I", 3) + b"web" + struct.pack(">HH", 1, 3)) + opt(3, b"") + opt(2, b"")
open(os.path.join(d, "go"), "wb").write(b"\x00" + chunks(go))
req = lambda t, off, ln, flags=0: struct.pack(">IHHQQI", 0x25609513, flags, t, 7, off, ln)
reqs = req(0, 0, 4096) + req(1, 8192, 4096) + b"\xab" * 4096 + req(3, 0, 0) + req(4, 0, 65536) + req(6, 4096, 4096, 2) + req(2, 0, 0)
open(os.path.join(d, "requests"), "wb").write(b"\x01" + chunks(reqs))
PY
cd "$out"  # crash-* artifacts land here
SWIFT_BACKTRACE=enable=no ./nbd-fuzz -max_total_time="$secs" -print_final_stats=1 -max_len=16384 corpus 2>&1 \
    | grep -E "^(#[0-9]+ *DONE|Done|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|.*deadly signal)" || true
test "${PIPESTATUS[0]}" = 0
