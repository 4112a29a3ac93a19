# Sourced by the NBD benchmarks. bench_start PREFIX PACKAGE...: installs the Debian packages that
# are missing, builds the daemon (release), and makes $work, a scratch directory under /var/tmp
# (a file in /tmp ran at a fraction of the disk's speed here), removed on exit together with every
# server whose pid is in $pids.
bench_start() {
    local prefix=$1 missing="" p
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
    swift build -c release --product swapfaird 2>&1 | grep -E "error|complete" | tail -1 || true
    work=$(mktemp -d "/var/tmp/swapfair-$prefix.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null
    rm -rf "$work"
}

# serve_swapfair DAEMON STATE_DIR SOCKET_DIR SIZE [QUEUE_DEPTH]: one export "bench" of the volume
# STATE_DIR/volumes/bench.img, served by DAEMON alone (--swap-only).
serve_swapfair() {
    cat > "$2.toml" <<TOML
[host]
state_dir = "$2"
nbd_dir = "$3"
swap_queue_depth = ${5:-64}
[[vm]]
name = "bench"
swap_device = { size = "$4" }
TOML
    "$1" --config "$2.toml" --socket "$2.ctl" --swap-only --log-level error &
    pids+=($!)
}
