#!/usr/bin/env bash
# systemd-analyze verify on every unit in Units/. The binaries a unit names are pointed at the
# freshly built ones (and QEMU at /bin/true where it is not installed), so that only the units
# themselves are judged. Prints one PASS:/FAIL: line per unit.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${SWAPFAIR_BIN:-$PWD/.build/debug}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
qemu=/usr/bin/qemu-system-x86_64
[ -x "$qemu" ] || qemu=/bin/true
failed=0
for u in Units/*.service Units/*.slice; do
    name=$(basename "$u")
    [ "${name%@.service}" != "$name" ] && name="${name%@.service}@check.service"
    sed -e "s#/usr/local/bin/swapfair#$bin/swapfair#g" -e "s#/usr/bin/qemu-system-x86_64#$qemu#g" "$u" > "$work/$name"
done
for f in "$work"/*; do
    out=$(cd "$work" && systemd-analyze verify --man=no "$(basename "$f")" 2>&1 | grep -v "^$")
    if [ -z "$out" ]; then
        echo "PASS: systemd-analyze verify $(basename "$f")"
    else
        echo "FAIL: systemd-analyze verify $(basename "$f"): $out"
        failed=1
    fi
done
exit $failed
