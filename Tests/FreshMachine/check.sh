#!/usr/bin/env bash
# CI check: the README's first command, Scripts/demo, on a machine where nothing is set up yet.
#
#   Tests/FreshMachine/check.sh          (as root; prints PASS:/FAIL: lines, exit status 0 if all pass)
#
# The machine is a minimal Debian 12 root (debootstrap --variant=minbase) with only what a new
# machine of this kind comes with: the Swift toolchain at /opt/swift (bind-mounted) with the Debian
# packages swift.org lists for it, and git sending github.com to the same package mirror as this
# host. None of swapfair's own packages: the demo must install them itself. In it, a fresh clone of
# this repository (with the working tree's uncommitted and untracked files) runs Scripts/demo, which
# builds, installs the lab's packages and boots the lab guest (QEMU, TCG), since the root shows no
# cgroup v2 (nothing of the host's /sys/fs/cgroup is mounted in it, so the demo cannot touch the
# host's cgroups). The check wants its summary, demo.csv and demo.svg.
#
# The root is built once and kept pristine under FRESH_CACHE; every run works on a throwaway
# overlay of it, in private mount and PID namespaces, so its mounts and processes end with it.
# apt's downloaded .debs and the lab's kernel package are kept between runs: the packages are
# still missing each time, only the downloads are spared.
#
# Env: FRESH_CACHE=/var/cache/swapfair-fresh   the pristine root, apt's archives, the kernel package
#      FRESH_DEMO_SECONDS=20    the demo's length (its DEMO_SECONDS; the demo's default is 100):
#                               what is checked is the set-up and the run to the end, not the policy
#      FRESH_TIMEOUT=2700       seconds until the demo is killed
#      FRESH_REBUILD=1          rebuild the pristine root (else rebuilt after 30 days or when its
#                               package list changes)
#      FRESH_KEEP=1             keep the run's directory (overlay upper layer, demo.log)
#      FRESH_MIRROR=URL         Debian mirror (default: the one this host's apt uses)
#      FRESH_SWIFT=DIR          the toolchain to bind-mount (default: the one swift on PATH is in)
#      SWIFT_BUILD_LOCK=/tmp/swift-build.lock  swift build in the root holds this lock (flock), so it
#                               takes turns with other builds on the machine; empty: no lock
set -uo pipefail

SUITE=bookworm
# Swift's prerequisites on Debian 12 (swift.org's list, with swiftly's C/C++ runtime packages);
# git among them, which SwiftPM needs for the package dependencies.
SWIFT_DEPS="binutils gcc git libc6-dev libcurl4-openssl-dev libedit-dev libgcc-12-dev libicu-dev
            libncurses-dev libpython3-dev libsqlite3-dev libstdc++-12-dev libxml2-dev pkg-config
            tzdata uuid-dev zlib1g-dev ca-certificates"
# The packages a fresh machine lacks and the demo needs (the build's, the demo's, the lab's).
PROJECT_PKGS="liburing-dev libsystemd-dev python3 qemu-system-x86 busybox-static"
CACHE=${FRESH_CACHE:-/var/cache/swapfair-fresh}
SECONDS_=${FRESH_DEMO_SECONDS:-20}
TIMEOUT=${FRESH_TIMEOUT:-2700}
LOCK=${SWIFT_BUILD_LOCK-/tmp/swift-build.lock}
# The toolchain's root (/opt/swift here): swift is TOOLCHAIN/usr/bin/swift*.
TOOLCHAIN=${FRESH_SWIFT:-$(s=$(command -v swift) && dirname "$(dirname "$(dirname "$(readlink -f "$s")")")")}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

say() { echo "fresh: $*"; }
now() { date +%s; }
since() { echo "$(( $(now) - $1 ))s"; }

# ---------------------------------------------------------------- inside the namespaces
# (re-entered through unshare below; everything mounted here vanishes with the namespace)
if [ "${1:-}" = --in-ns ]; then
    mount_sys() {   # $1 = root: /proc, /dev, a read-only /sys without the cgroup mounts under it
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --bind /sys "$1/sys" && mount -o remount,bind,ro "$1/sys"
    }
    case "$2" in
    base)   # $3 = the new root: install the toolchain's packages in it
        root=$3
        mount_sys "$root"
        chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            sh -c "apt-get -q update && apt-get -q install -y --no-install-recommends $(echo $SWIFT_DEPS) && apt-get clean" ||
            exit 1
        exit 0 ;;
    run)    # $3 = run dir: overlay, mounts, clone, demo, checks
        W=$3 root=$3/root
        pass=0 fail=0
        ok() { echo "PASS: $*"; pass=$((pass + 1)); }
        ko() { echo "FAIL: $*"; fail=$((fail + 1)); }
        mkdir -p "$W/upper" "$W/work" "$root"
        if ! mount -t overlay overlay -o "lowerdir=$CACHE/base,upperdir=$W/upper,workdir=$W/work" "$root" 2>/dev/null; then
            # no overlayfs on this filesystem: a copy does the same, a little slower
            cp -a --reflink=auto "$CACHE/base/." "$root/" || { ko "cannot make a copy of $CACHE/base"; exit 1; }
        fi
        mount_sys "$root"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        mkdir -p "$root$TOOLCHAIN" "$root/mnt/swapfair-src" \
                 "$root/var/cache/apt/archives" "$root/root/.cache/swapfair-lab/debs"
        mount --bind -o ro "$TOOLCHAIN" "$root$TOOLCHAIN"
        mount --bind -o ro "$REPO" "$root/mnt/swapfair-src"
        mount --bind "$CACHE/apt-archives" "$root/var/cache/apt/archives"
        mount --bind "$CACHE/lab-debs" "$root/root/.cache/swapfair-lab/debs"
        # git as configured here: github.com rewritten to a local package mirror, which comes along
        { git config --system --get-regexp '^url\..*\.insteadof$' || true
          git config --global --get-regexp '^url\..*\.insteadof$' || true; } > "$W/git-urls"
        while read -r k v; do
            base=${k#url.}; base=${base%.insteadof}
            if [ "${base#/}" != "$base" ] && [ -d "$base" ] && ! mountpoint -q "$root$base"; then
                mkdir -p "$root$base" && mount --bind -o ro "$base" "$root$base"
            fi
            chroot "$root" git config --system --add "$k" "$v"
        done < "$W/git-urls"
        if [ -n "$LOCK" ]; then
            touch "$LOCK" "$root/run/swift-build.lock"
            mount --bind "$LOCK" "$root/run/swift-build.lock"
            # builds take turns with the machine's other builds; everything else goes straight through
            cat > "$root/usr/local/bin/swift" <<EOF
#!/bin/sh
case "\$1" in build|run|test) exec flock /run/swift-build.lock $TOOLCHAIN/usr/bin/swift "\$@" ;; esac
exec $TOOLCHAIN/usr/bin/swift "\$@"
EOF
            chmod 755 "$root/usr/local/bin/swift"
        fi
        in_root() {
            chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
                PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$TOOLCHAIN/usr/bin "$@"
        }
        installed() { in_root dpkg-query -W -f='${Package} ${Status}\n' $PROJECT_PKGS 2>/dev/null |
                      awk '/install ok installed/ {print $1}' | xargs; }
        have=$(installed)
        if [ -z "$have" ]; then ok "the fresh root has none of: $PROJECT_PKGS"
        else ko "the fresh root already has $have"; fi

        t=$(now)
        in_root git -c safe.directory='*' clone -q /mnt/swapfair-src /root/swapfair ||
            { ko "git clone of $REPO failed"; exit 1; }
        # the working tree as git sees it: modified and untracked (not ignored) files, deletions
        n=0
        while IFS= read -r -d '' f; do
            if [ -e "$REPO/$f" ] || [ -L "$REPO/$f" ]; then
                mkdir -p "$(dirname "$root/root/swapfair/$f")"
                cp -a "$REPO/$f" "$root/root/swapfair/$f"
            else
                rm -f "$root/root/swapfair/$f"
            fi
            n=$((n + 1))
        done < <(git -C "$REPO" ls-files -z --modified --others --exclude-standard)
        rm -rf "$root/root/swapfair/demo-output"
        say "cloned $(git -C "$REPO" rev-parse --short HEAD)$([ $n = 0 ] || echo " with the working tree's $n uncommitted files") in $(since "$t")"

        say "running Scripts/demo (DEMO_SECONDS=$SECONDS_) in the fresh root; its output, with seconds since its start:"
        t=$(now)
        timeout -k 30 "$TIMEOUT" chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$TOOLCHAIN/usr/bin \
            DEMO_SECONDS="$SECONDS_" /bin/bash -c 'cd /root/swapfair && exec Scripts/demo' </dev/null 2>&1 |
            tee "$W/demo.log" | { s0=$SECONDS; while IFS= read -r l; do printf '  | %4ss  %s\n' $((SECONDS - s0)) "$l"; done; }
        rc=${PIPESTATUS[0]}
        say "the demo took $(since "$t")"
        out=$root/root/swapfair/demo-output
        case $rc in
            0) ok "Scripts/demo exited 0 on a fresh machine" ;;
            124) ko "Scripts/demo timed out after ${TIMEOUT}s" ;;
            *) ko "Scripts/demo exited $rc on a fresh machine (last lines above)" ;;
        esac
        sorted() { xargs -n1 | sort | xargs; }
        have=$(installed | sorted)
        if [ "$have" = "$(echo $PROJECT_PKGS | sorted)" ]; then
            ok "the demo installed what it needs: $have"
        else
            ko "after the demo, of $PROJECT_PKGS only these are installed: ${have:-none}"
        fi
        if grep -aq '^summary' "$W/demo.log" && grep -aq 'touches/s' "$W/demo.log"; then
            ok "the demo reached its summary"
        else
            ko "the demo printed no summary"
        fi
        rows=$(($( { wc -l < "$out/demo.csv"; } 2>/dev/null || echo 1) - 1))
        if [ "$rows" -ge $((SECONDS_ / 2)) ] && head -1 "$out/demo.csv" | grep -q 'small-a_entitled'; then
            ok "demo-output/demo.csv has $rows rows of figures"
        else
            ko "demo-output/demo.csv is missing or short ($rows rows)"
        fi
        if grep -q '<svg' "$out/demo.svg" 2>/dev/null && [ "$(grep -c '<polyline' "$out/demo.svg")" -ge 3 ] &&
           grep -q '</svg>' "$out/demo.svg"; then
            ok "demo-output/demo.svg is a plot ($(grep -c '<polyline' "$out/demo.svg") lines)"
        else
            ko "demo-output/demo.svg is missing or has no plot"
        fi
        echo "fresh: $pass passed, $fail failed"
        [ "$fail" = 0 ]
        exit ;;
    esac
    exit 2
fi

# ---------------------------------------------------------------- on the host
[ "$(id -u)" = 0 ] || { echo "FAIL: the fresh-machine check needs root (debootstrap, chroot, mounts)"; exit 1; }
t_all=$(now)
case "$TOOLCHAIN" in
    /|/usr|"") echo "FAIL: no self-contained Swift toolchain found (swift on PATH, or FRESH_SWIFT=DIR)"; exit 1 ;;
esac
export CACHE SWIFT_DEPS PROJECT_PKGS SECONDS_ TIMEOUT LOCK REPO TOOLCHAIN

host_apt() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q "$@"; }
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    { host_apt install -y --no-install-recommends debootstrap ||
      { host_apt update && host_apt install -y --no-install-recommends debootstrap; }; } >/dev/null 2>&1 ||
        { echo "FAIL: cannot install debootstrap"; exit 1; }
fi

mirror=${FRESH_MIRROR:-}
[ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
                             awk '$1=="URIs:" && $2 ~ /debian\/?$/ {print $2; exit}')
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
mirror=${mirror:-http://deb.debian.org/debian}
security=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -vE '^\s*#' |
           grep -oE 'https?://[^ ]*debian-security/?' | head -1)
security=${security:-http://deb.debian.org/debian-security}

# ---- the pristine root, built once
mkdir -p "$CACHE/apt-archives/partial" "$CACHE/lab-debs" "$CACHE/runs"
exec 8>"$CACHE/.lock"
flock 8   # one builder of the root at a time; runs then share it read-only
key=$(echo "$SUITE $mirror $security $SWIFT_DEPS" | sha256sum | cut -c1-16)
if [ -n "${FRESH_REBUILD:-}" ] || [ "$(cat "$CACHE/base/.fresh-key" 2>/dev/null)" != "$key" ] ||
   [ -n "$(find "$CACHE/base/.fresh-key" -mtime +30 2>/dev/null)" ]; then
    t=$(now)
    say "building a minimal Debian 12 root in $CACHE/base (debootstrap from $mirror; once)"
    rm -rf "$CACHE/base.new"
    debootstrap --variant=minbase "$SUITE" "$CACHE/base.new" "$mirror" > "$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 20 "$CACHE/debootstrap.log"; echo "FAIL: debootstrap failed (log: $CACHE/debootstrap.log)"; exit 1; }
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "$mirror" "$SUITE" "$mirror" "$SUITE" "$security" "$SUITE" > "$CACHE/base.new/etc/apt/sources.list"
    cp /etc/resolv.conf "$CACHE/base.new/etc/resolv.conf"
    # as in Debian's container images: packages never start services in this root
    printf '#!/bin/sh\nexit 101\n' > "$CACHE/base.new/usr/sbin/policy-rc.d"
    chmod 755 "$CACHE/base.new/usr/sbin/policy-rc.d"
    unshare --mount --pid --fork --kill-child --propagation private -- "$BASH" "$0" --in-ns base "$CACHE/base.new" \
        > "$CACHE/base-apt.log" 2>&1 ||
        { tail -n 20 "$CACHE/base-apt.log"; echo "FAIL: installing Swift's packages in the root failed (log: $CACHE/base-apt.log)"; exit 1; }
    rm -rf "$CACHE/base.new/var/lib/apt/lists/"*   # a new machine has read no package lists yet
    echo "$key" > "$CACHE/base.new/.fresh-key"
    rm -rf "$CACHE/base"
    mv "$CACHE/base.new" "$CACHE/base"
    say "root ready in $(since "$t") ($(du -sh "$CACHE/base" | cut -f1))"
else
    say "using the cached root $CACHE/base"
fi
flock -u 8
exec 8>&- 8<"$CACHE/.lock"
flock -s 8   # held (shared) while the run uses the root, so no rebuild replaces it underneath

# ---- the run, in its own mount and PID namespaces
# runs killed before their clean-up leave their directories; none is still in use after a day
find "$CACHE/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -mmin +1440 2>/dev/null | while read -r d; do
    findmnt -rn -o TARGET | grep -q "^$d" || rm -rf "$d"
done
W=$(mktemp -d "$CACHE/runs/run.XXXXXX")
unshare --mount --pid --fork --kill-child --propagation private -- "$BASH" "$0" --in-ns run "$W" 2>&1 | tee "$W/check.log"
rc=${PIPESTATUS[0]}
# a failure before any verdict (unshare, say) still counts as one
[ "$rc" = 0 ] || grep -aq '^FAIL' "$W/check.log" || echo "FAIL: the fresh-machine run ended with status $rc"
# Nothing should be mounted under W now (the namespace is gone); never delete through a mount.
if findmnt -rn -o TARGET | grep -q "^$W"; then
    echo "FAIL: $W still has mounts; left in place"
    rc=1
elif [ -n "${FRESH_KEEP:-}" ]; then
    say "run dir kept: $W"
else
    rm -rf "$W"
fi
say "whole check: $(since "$t_all")"
exit "$rc"
