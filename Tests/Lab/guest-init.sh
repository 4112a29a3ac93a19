#!/bin/busybox sh
# PID 1 of the swapfair lab guest. build-guest.sh packs it into the initramfs as /init and
# run-guest.sh boots it. It makes the machine look like a cgroup-v2 host with swap, runs one
# command and powers off.
#
# What the host hands over (9p over virtio, see run-guest.sh):
#   labctl    this run's control dir: env (settings), cmd (the command as a script);
#             we write rc (exit status) and timing back into it
#   hostroot  the host's "/" read-only; with a tmpfs overlay on top it becomes the guest's
#             root, so host-built binaries and their shared libraries run unchanged
#   labshare  the directory given to run-guest.sh, mounted read-write at its host path
# The command's stdout and stderr go to the virtio-serial port "labout" (a file on the host,
# streamed by run-guest.sh). The kernel console (ttyS0) gets kernel messages and our
# "lab-init:" lines.
# On any setup failure we write 126 to rc, so the host can tell it from the command's status.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
T_INIT=$(cut -d' ' -f1 /proc/uptime)
KV=$(cat /etc/lab-kernel)

say() { echo "lab-init: $*"; }
die() {
    say "FATAL: $*"
    echo 126 > /lab/rc 2>/dev/null
    sync
    poweroff -f
    exit 1   # if power-off failed: PID 1 exiting panics the kernel, and QEMU stops on the reboot
}

NINEP="trans=virtio,version=9p2000.L,msize=512000"
for m in virtio_pci 9pnet_virtio 9p virtio_console; do modprobe -q $m; done
mount -t 9p -o "$NINEP" labctl /lab || die "cannot mount the control dir (9p tag labctl)"
[ -r /lab/env ] || die "no /lab/env"
. /lab/env

# command output: the virtio-serial port named labout
OUT=""
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = labout ] && OUT=/dev/${p##*/}
done
[ -n "$OUT" ] || die "no virtio-serial port named labout"

for m in $LAB_MODULES; do modprobe -q "$m" || say "modprobe $m failed"; done

# ---- swap ----
# zram is quick but its compressed pages are not charged to any cgroup; a disk swap device
# behaves like the real host's.
case "$LAB_SWAP" in
    zram:*)
        modprobe -q zram num_devices=1 || die "modprobe zram failed"
        echo "${LAB_SWAP#zram:}" > /sys/block/zram0/disksize || die "cannot size zram0 to ${LAB_SWAP#zram:}"
        SWAPDEV=/dev/zram0 ;;
    disk:*)
        modprobe -q virtio_blk
        SWAPDEV=""
        for b in /sys/block/vd*; do   # run-guest.sh gives the swap disk the serial "labswap"
            [ "$(cat "$b/serial" 2>/dev/null)" = labswap ] && SWAPDEV=/dev/${b##*/}
        done
        [ -n "$SWAPDEV" ] || die "no virtio disk with serial labswap" ;;
    none) SWAPDEV="" ;;
    *) die "LAB_SWAP must be zram:SIZE, disk:SIZE or none (got $LAB_SWAP)" ;;
esac
if [ -n "$SWAPDEV" ]; then
    mkswap "$SWAPDEV" >/dev/null && swapon "$SWAPDEV" || die "swapon $SWAPDEV failed"
fi

# ---- root: host / read-only under a tmpfs overlay (writes vanish at power-off) ----
R=/newroot
modprobe -q overlay || die "modprobe overlay failed"
mkdir -p /mnt/host /mnt/rw
mount -t 9p -o "$NINEP,ro,cache=loose" hostroot /mnt/host || die "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay $R ||
    die "overlay mount failed"
# the guest's own kernel filesystems hide the host's
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
ln -sf /proc/self/fd $R/dev/fd
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=755 run $R/run
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# the host has no modules for this kernel: lend it ours so modprobe works in the command
mkdir -p "$R/lib/modules/$KV" && mount --bind "/lib/modules/$KV" "$R/lib/modules/$KV"

# ---- LAB_INIT=systemd: the same root, booted by systemd as PID 1 ----
# The command runs as a oneshot unit once basic.target is reached; its output goes to the same
# port, its status to the control dir, and then systemd powers the machine off. systemd mounts
# cgroup2 itself and owns the tree, as on a real host.
if [ "${LAB_INIT:-shell}" = systemd ]; then
    mkdir -p $R/run/lab && mount --bind /lab $R/run/lab
    mkdir -p "$R$LAB_SHARE_PATH"
    mount -t 9p -o "$NINEP,cache=mmap" labshare "$R$LAB_SHARE_PATH" || die "cannot mount $LAB_SHARE_PATH (9p tag labshare)"
    U=$R/etc/systemd/system
    mkdir -p $U
    cat > $U/lab.target <<UNIT
[Unit]
Description=swapfair lab
Requires=basic.target lab-run.service
After=basic.target
AllowIsolate=yes
UNIT
    cat > $U/lab-run.service <<UNIT
[Unit]
Description=swapfair lab command
After=basic.target dbus.socket
[Service]
Type=oneshot
Environment=HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=/bin/sh /run/lab-run.sh $OUT
TimeoutStartSec=infinity
UNIT
    cat > $R/run/lab-run.sh <<'SCRIPT'
cut -d' ' -f1 /proc/uptime > /run/lab/ready
/bin/sh /run/lab/cmd </dev/null >"$1" 2>&1
echo $? > /run/lab/rc
sync
systemctl poweroff --no-block
SCRIPT
    ln -sf /etc/systemd/system/lab.target $U/default.target
    # Nothing in the lab needs a login prompt or the network.
    for u in getty.target serial-getty@ttyS0.service systemd-networkd-wait-online.service networking.service \
             ssh.service cron.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null $U/$u
    done
    : > $R/etc/machine-id
    echo "init=$T_INIT kernel=$KV systemd=1" > /lab/timing
    umount /proc/sys/fs/binfmt_misc 2>/dev/null
    exec switch_root $R /lib/systemd/systemd --log-level=notice --show-status=no
fi

# ---- cgroup v2, as on a host where swapfair runs: every controller on in the root ----
mount -t cgroup2 -o "$LAB_CGROUP_OPTS" cgroup2 $R/sys/fs/cgroup || die "cannot mount cgroup2 ($LAB_CGROUP_OPTS)"
for c in $(cat $R/sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > $R/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable controller $c"
done

# ---- the shared dir, read-write at its host path ----
mkdir -p "$R$LAB_SHARE_PATH"
mount -t 9p -o "$NINEP,cache=mmap" labshare "$R$LAB_SHARE_PATH" || die "cannot mount $LAB_SHARE_PATH (9p tag labshare)"
mkdir -p $R/run/lab && mount --bind /lab $R/run/lab
ip link set lo up 2>/dev/null
hostname swapfair-lab

# ---- run the command: clean environment, no stdin, output to the port ----
T_READY=$(cut -d' ' -f1 /proc/uptime)
env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot $R /bin/sh /run/lab/cmd </dev/null >"$OUT" 2>&1
rc=$?
T_DONE=$(cut -d' ' -f1 /proc/uptime)
echo "init=$T_INIT ready=$T_READY done=$T_DONE kernel=$KV" > /lab/timing
echo $rc > /lab/rc
say "command exited with status $rc"
sync
poweroff -f
