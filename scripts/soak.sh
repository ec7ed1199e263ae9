#!/usr/bin/env bash
# make soak: CYCLES (1000) rounds of spawning N (10) containers and removing
# them, then a count of everything pirun could have left on the machine:
# mounts, links, network namespaces, iptables rules, cgroups, address
# allocations, names, records and processes. Exits non-zero on any leftover.
# It uses a state directory and a bridge of its own.
set -euo pipefail
PIRUN_BIN=${PIRUN_BIN:-bin/pirun}
CYCLES=${CYCLES:-1000}
N=${N:-10}
IMAGE=${IMAGE:-rpi-busybox-httpd}
state=$(mktemp -d /run/pirun-soak.XXXXXX)
P="$PIRUN_BIN --state $state --bridge pirun-soak --subnet 10.126.0.0/16"
cleanup() { $P rm -f --all >/dev/null 2>&1 || true; rm -rf "$state"; }
trap cleanup EXIT

start=$(date +%s)
for i in $(seq "$CYCLES"); do
	$P spawn -q -n "$N" --name soak "$IMAGE" >/dev/null
	$P rm -f --all
	if (( i % 100 == 0 )); then echo "cycle $i/$CYCLES ($(( $(date +%s) - start )) s)"; fi
done
elapsed=$(( $(date +%s) - start ))

count() { local n; n=$(eval "$1" 2>/dev/null | wc -l); echo "$n"; }
mounts=$(count "grep -E 'pirun' /proc/self/mountinfo")
links=$(count "ip -o link show | grep -E 'pirun-soak|pr[0-9a-f]{10}'")
netns=$(count "ip netns list | grep -i pirun")
rules=$(count "iptables-save | grep -i pirun")
cgroups=$(count "find /sys/fs/cgroup -maxdepth 3 -name '*pirun*'")
allocs=$(count "find $state/network -path '*/ips/*' -type f")
records=$(count "ls $state/containers $state/names $state/runc | grep -v ':$' | grep -v '^$'")
procs=$(count "ps -eo stat,args | grep -v '^Z' | grep 'httpd -f' | grep -v grep")
echo "$CYCLES cycles of $N containers in $elapsed s ($(awk -v c="$CYCLES" -v n="$N" -v s="$elapsed" 'BEGIN { printf "%.1f", c*n/(s>0?s:1) }') containers/s)"
echo "left: mounts $mounts, links $links, netns $netns, iptables rules $rules, cgroups $cgroups, allocations $allocs, records $records, processes $procs"
[ "$mounts$links$netns$rules$cgroups$allocs$records$procs" = "00000000" ]
