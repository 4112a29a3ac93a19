#!/bin/bash
R=$PWD/Tests/Lab/research
echo "== uname"; uname -r
echo "== enabled $(cat /sys/kernel/mm/lru_gen/enabled) min_ttl $(cat /sys/kernel/mm/lru_gen/min_ttl_ms) swappiness $(cat /proc/sys/vm/swappiness)"
ls -l /sys/kernel/debug/lru_gen /sys/kernel/debug/lru_gen_full
cat /proc/swaps
mkdir /sys/fs/cgroup/ws
echo "== raw lru_gen at boot (with /ws empty)"; cat /sys/kernel/debug/lru_gen
( echo $BASHPID > /sys/fs/cgroup/ws/cgroup.procs; exec $R/ws 200 40 /tmp/ready i3 b30 i30 b20 ) &
WS=$!
while [ ! -e /tmp/ready ]; do sleep 0.1; done
echo "== raw lru_gen after ws ready"; cat /sys/kernel/debug/lru_gen
echo "== raw lru_gen_full for /ws"; awk '/^memcg/{p=($3=="/ws")} p' /sys/kernel/debug/lru_gen_full
grep -E "^(anon|file|active_anon|inactive_anon|pgscan|pgsteal|workingset_refault_anon|swap) " /sys/fs/cgroup/ws/memory.stat
grep -E "pswpout|pgscan_|pgsteal_" /proc/vmstat | tr '\n' ' '; echo
$R/lrumon /ws 2000 45 1 1
echo "== after"
grep -E "^(anon|file|active_anon|inactive_anon|pgscan|pgsteal|workingset_refault_anon|swap) " /sys/fs/cgroup/ws/memory.stat
cat /sys/fs/cgroup/ws/memory.swap.current
grep -E "pswpout|pgscan_|pgsteal_" /proc/vmstat | tr '\n' ' '; echo
awk '/^memcg/{p=($3=="/ws")} p' /sys/kernel/debug/lru_gen_full
kill $WS
