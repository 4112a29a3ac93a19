# Sourced by the lab's shell tests: `. Tests/Lab/checks.sh NAME`. PASS/FAIL lines through ok and
# ko; finish prints the closing count "NAME: N passed, M failed" (what suite.sh looks for) and
# exits, with status 0 only if nothing failed.
check_name=$1
pass=0; fail=0
ok() { echo "PASS: $*"; pass=$((pass+1)); }
ko() { echo "FAIL: $*"; fail=$((fail+1)); }
finish() { echo "$check_name: $pass passed, $fail failed"; [ $fail = 0 ]; exit; }
# Takes the guest's swap out of use, for a device of the test's to be the only swap; the guest's
# own comes back when the test exits.
swap_aside() {
    swapped_before=$(swapon --show=NAME --noheadings)
    swapoff -a
    trap 'for d in $swapped_before; do swapon "$d" 2>/dev/null; done' EXIT
}
