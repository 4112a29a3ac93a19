#!/bin/bash
# errno cases, can_swap / force_scan variants, memory.stat readout, moved-process pitfall
R=$PWD/Tests/Lab/research
L=/sys/kernel/debug/lru_gen
cat /sys/kernel/security/lockdown 2>&1
w() { local out; out=$( { printf '%s' "$1" > $L; } 2>&1 ); echo "write '$1' -> ${out:-OK}"; }
show() { awk -v p="$1" '/^memcg/{ok=($3==p)} ok' $L; }
maxseq() { awk -v p="$1" '/^memcg/{ok=($3==p)} ok && NF==4 {s=$1} END{print s}' $L; }
mid() { awk -v p="$1" '$1=="memcg" && $3==p {print $2}' $L; }
mkdir /sys/fs/cgroup/ws /sys/fs/cgroup/mv
( echo $BASHPID > /sys/fs/cgroup/ws/cgroup.procs; exec $R/ws 200 40 /tmp/ready b1000 ) > /dev/null &
WS=$!
while [ ! -e /tmp/ready ]; do sleep 0.1; done
ID=$(mid /ws); M=$(maxseq /ws); echo "id=$ID max=$M"
show /ws
echo "== errno cases"
w "+ $ID 0 $((M+1))"
w "+ $ID 0 $((M-1))"; show /ws | tail -1
w "+ $ID 0 $M"; M=$(maxseq /ws); show /ws
w "+ 999 0 $M"
w "+ $ID 1 $M"
w "+ $ID 0 $M 1 1 extra"
w "garbage"
w "+ $ID 0"
echo "-- default args (swappiness default, force_scan default)"; M=$(maxseq /ws); w "+ $ID 0 $M"; show /ws
echo "-- force_scan=0 repeated (gens full?)"
for i in 1 2 3 4 5; do sleep 1; M=$(maxseq /ws); w "+ $ID 0 $M 1 0"; done; show /ws
echo "-- can_swap=0 force_scan=0"
for i in 1 2 3 4 5; do sleep 1; M=$(maxseq /ws); w "+ $ID 0 $M 0 0"; done; show /ws
echo "-- can_swap=0 force_scan=1"
for i in 1 2 3 4 5; do sleep 1; M=$(maxseq /ws); w "+ $ID 0 $M 0 1"; show /ws | tail -4 | tr -s ' ' | tr '\n' '|'; echo; done
echo "-- back to can_swap=1 force_scan=1"
for i in 1 2 3 4 5; do sleep 1; M=$(maxseq /ws); w "+ $ID 0 $M 1 1"; show /ws | tail -4 | tr -s ' ' | tr '\n' '|'; echo; grep -E "^(active|inactive)_anon" /sys/fs/cgroup/ws/memory.stat | tr '\n' ' '; echo; done
echo "-- two writes in one (';' separated)"
M=$(maxseq /ws); w "+ $ID 0 $M 1 1; + $ID 0 $((M+1)) 1 1"; show /ws
echo "== process that allocated in /mv, then moved to /ws (charges stay in /mv)"
( echo $BASHPID > /sys/fs/cgroup/mv/cgroup.procs; exec $R/ws 64 64 /tmp/ready2 i2 b1000 ) > /dev/null &
MV=$!
while [ ! -e /tmp/ready2 ]; do sleep 0.1; done
echo $MV > /sys/fs/cgroup/ws/cgroup.procs
sleep 3
for i in 1 2 3; do
  for p in /mv /ws; do M=$(maxseq $p); w "+ $(mid $p) 0 $M 1 1"; done; sleep 2
done
show /mv; show /ws
echo "== removed cgroup id"
mkdir /sys/fs/cgroup/gone; GID=$(mid /gone); GM=$(maxseq /gone); rmdir /sys/fs/cgroup/gone; sleep 0.5
echo "gone id=$GID"; w "+ $GID 0 $GM 1 1"
mkdir /sys/fs/cgroup/new1; echo "new cgroup id=$(mid /new1) (id reuse?)"
echo "== as nobody"
su -s /bin/sh nobody -c "cat $L | head -2; echo '+ $ID 0 1' > $L" 2>&1 | head -5
grep -E "pswpout|pgscan_kswapd|pgscan_direct |pgsteal_anon" /proc/vmstat | tr '\n' ' '; echo
kill $WS $MV
