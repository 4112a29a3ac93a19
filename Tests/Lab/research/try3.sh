#!/bin/bash
# transitions with absolute time, period 2s and 5s
R=$PWD/Tests/Lab/research
mkdir /sys/fs/cgroup/ws
( echo $BASHPID > /sys/fs/cgroup/ws/cgroup.procs; exec $R/ws 200 40 /tmp/ready i5 b12 i12 a8 b12 i12 ) &
WS=$!
while [ ! -e /tmp/ready ]; do sleep 0.1; done
$R/lrumon /ws 2000 32 1 1 | sed 's/ id=.*gens:/ gens:/'
echo "== period 5 s"
rm /tmp/ready; kill $WS; sleep 0.5
( echo $BASHPID > /sys/fs/cgroup/ws/cgroup.procs; exec $R/ws 200 40 /tmp/ready i5 b23 i23 b15 ) &
WS=$!
while [ ! -e /tmp/ready ]; do sleep 0.1; done
$R/lrumon /ws 5000 14 1 1 | sed 's/ id=.*gens:/ gens:/'
kill $WS
