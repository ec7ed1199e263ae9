#!/usr/bin/env bash
# make scale: N (10000) web servers on one host, each in its own namespaces
# with its own address, started in batches of BATCH (1000), PARALLEL (2) at
# once; then GET / from every one, memory and slab per container, removal,
# and a count of everything that could be left (must be nothing).
#
# It uses a state directory, a bridge network (BRIDGE, SUBNET) and a group
# name of its own, so it counts only what it made. Requests go only to the
# containers' own addresses, each bounded in time (--max-time), PROBES at
# once, the whole sweep bounded too. NETWORK=none starts them without a
# network (to split the kernel memory between the network and the rest);
# then no page is fetched.
set -euo pipefail
PIRUN_BIN=${PIRUN_BIN:-bin/pirun}
N=${N:-10000}
BATCH=${BATCH:-1000}
PARALLEL=${PARALLEL:-2}
PROBES=${PROBES:-16}
IMAGE=${IMAGE:-rpi-busybox-httpd}
BRIDGE=${BRIDGE:-pirun-scale}
SUBNET=${SUBNET:-10.122.0.0/16}
NETWORK=${NETWORK:-bridge}
state=$(mktemp -d /run/pirun-scale.XXXXXX)
work=$(mktemp -d)
P="$PIRUN_BIN --state $state --bridge $BRIDGE --subnet $SUBNET"

# remove_all removes every container of the run. rm keeps a container that
# is not gone 10 s after SIGKILL (thousands at once on a busy machine) and
# says so; rm again finishes the job. Up to 10 rounds.
remove_all() {
	local round
	for round in $(seq 10); do
		if $P rm -f --all 2>"$work/rm.err"; then
			[ "$round" = 1 ] || echo "   (rm needed $round rounds)"
			return 0
		fi
		echo "   rm round $round: $(grep -c . "$work/rm.err") lines of errors, e.g. $(head -1 "$work/rm.err" | cut -c1-200)"
		sleep 5
	done
	return 1
}
# The state goes only when nothing is left in it: otherwise it is what
# 'pirun --state DIR rm -f --all' and 'network prune' need to finish.
drop_state() {
	if [ -z "$($P ps -a -q 2>/dev/null)" ] && [ -z "$(find "$state/network" -path '*/ips/*' -type f 2>/dev/null)" ]; then
		rm -rf "$state"
	else
		echo "   state kept in $state: finish with '$P rm -f --all' and '$P network prune'"
	fi
}
cleanup() { remove_all >/dev/null 2>&1 || true; drop_state; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; } # kB
settle() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep "${1:-2}"; }
neigh_fulls() { # table_fulls of a neighbour table (last column, hex), summed over the CPUs
	local s=0 v
	for v in $(awk 'NR > 1 { print $NF }' "/proc/net/stat/$1"); do s=$(( s + 16#$v )); done
	echo "$s"
}
sysctls() {
	for k in kernel/pid_max net/ipv4/neigh/default/gc_thresh{1,2,3} net/ipv6/neigh/default/gc_thresh3 net/core/netdev_max_backlog net/ipv4/ip_forward; do
		printf '%s=%s ' "$k" "$(cat /proc/sys/$k)"
	done
}

echo "== scale: $N containers of $IMAGE, batches of $BATCH, --parallel $PARALLEL, network $NETWORK ($BRIDGE $SUBNET), state $state"
echo "   kernel $(uname -r), $(nproc) CPUs, pid_max $(cat /proc/sys/kernel/pid_max), threads $(awk '{ split($4, a, "/"); print a[2] }' /proc/loadavg)"
sysctls_before=$(sysctls)
netns0=$(lsns -n -t net | wc -l)
cgroups0=$(for d in /sys/fs/cgroup/*/pirun /sys/fs/cgroup/pirun; do [ -d "$d" ] && ls "$d"; done | grep -c -x '[0-9a-f]\{64\}' || true)
ipt_chain_before=$(iptables -S PIRUN-FORWARD >/dev/null 2>&1 && echo yes || echo no)
settle
avail0=$(meminfo MemAvailable) slab0=$(meminfo Slab) sunr0=$(meminfo SUnreclaim) percpu0=$(meminfo Percpu)
arp0=$(neigh_fulls arp_cache) nd0=$(neigh_fulls ndisc_cache)

t0=$(now)
started=0 failed=""
while (( started < N )); do
	n=$(( N - started < BATCH ? N - started : BATCH ))
	b0=$(now)
	if ! $P spawn -q -n "$n" --parallel "$PARALLEL" --network "$NETWORK" --name scale "$IMAGE" >>"$work/ids"; then
		failed="the spawn of containers $((started + 1))-$((started + n)) failed"
		echo "FAIL: $failed (load $(cut -d' ' -f1-4 /proc/loadavg), MemAvailable $(( $(meminfo MemAvailable) / 1024 )) MiB); the kernel's last words:"
		dmesg 2>/dev/null | grep -v -e 'entered' -e 'left' | tail -5 | sed 's/^/     /'
		break
	fi
	b1=$(now)
	started=$(( started + n ))
	echo "   $started started ($(secs "$t0" "$b1") s): this batch $(awk -v n="$n" -v a="$b0" -v b="$b1" 'BEGIN { printf "%.1f", n / (b - a) }') starts/s, load $(cut -d' ' -f1 /proc/loadavg)"
done
t1=$(now)
if [ -z "$failed" ]; then
	echo "   all $N started in $(secs "$t0" "$t1") s ($(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }') starts/s)"
	echo "   bridges: $(ip -o link show type bridge | awk -F': ' '{ print $2 }' | grep -E "^$BRIDGE(-[0-9]+)?$" | sort -V | paste -sd' ')"
	netns=$($P ps --format '{{.Pid}}' | awk '{ print "/proc/" $1 "/ns/net" }' | xargs -r readlink | sort -u | wc -l)
	echo "   $netns distinct network namespaces among them; sysctls now: $(sysctls)"

	ok=0 first=0
	if [ "$NETWORK" = bridge ]; then
		$P ps --format '{{.IP}}' | grep . >"$work/ips" || true
		total=$(wc -l <"$work/ips")
		probe() { # probe FILE: GET / from every address in FILE; prints "CODE ADDRESS" lines
			awk '{ printf "url = \"http://%s/\"\noutput = \"/dev/null\"\n", $1 }' "$1" >"$work/curl.conf"
			timeout 900 curl -s -Z --parallel-max "$PROBES" --noproxy '*' --max-time 5 --connect-timeout 5 \
				-w '%{http_code} %{url_effective}\n' -K "$work/curl.conf" 2>/dev/null || true
		}
		probe "$work/ips" >"$work/codes"
		first=$(grep -c '^200 ' "$work/codes" || true)
		grep -v '^200 ' "$work/codes" | sed 's,.*http://,,; s,/$,,' >"$work/retry" || true
		# Addresses curl never reported (the sweep timed out) are retried too.
		sed 's,.*http://,,; s,/$,,' "$work/codes" | sort >"$work/seen"
		sort "$work/ips" | comm -23 - "$work/seen" >>"$work/retry"
		ok=$first
		if [ -s "$work/retry" ]; then
			probe "$work/retry" >"$work/codes2"
			ok=$(( first + $(grep -c '^200 ' "$work/codes2" || true) ))
			# Which failed, by bridge, and the first few with curl's code.
			grep -v '^200 ' "$work/codes2" | sed 's,http://,,; s,/$,,' >"$work/failed" || true
			if [ -s "$work/failed" ]; then
				echo "   still failing after the retry, by bridge:" $(while read -r _ ip; do ip route get "$ip" | grep -o 'dev [^ ]*' ; done <"$work/failed" | sort | uniq -c | tr '\n' ' ')
				head -10 "$work/failed" | sed 's/^/     curl code /'
			fi
		fi
		t2=$(now)
		echo "== GET /: $first of $total answered 200 at the first request, $ok after one retry of the others; all answering $(secs "$t0" "$t2") s after the first start (sweep $(secs "$t1" "$t2") s)"
		echo "   neighbour table_fulls during the run: arp $(( $(neigh_fulls arp_cache) - arp0 )), ndisc $(( $(neigh_fulls ndisc_cache) - nd0 ))"
	fi
	running=$($P ps -q | wc -l)
	settle
	avail1=$(meminfo MemAvailable) slab1=$(meminfo Slab) sunr1=$(meminfo SUnreclaim) percpu1=$(meminfo Percpu)
	per() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'; }
	echo "== memory per container (after dropping caches; kB): MemAvailable $(per "$avail1" "$avail0"), Slab $(per "$slab0" "$slab1") (unreclaimable $(per "$sunr0" "$sunr1")), Percpu $(per "$percpu0" "$percpu1")"
	echo "   totals: MemAvailable $(( (avail0 - avail1) / 1024 )) MiB used, Slab +$(( (slab1 - slab0) / 1024 )) MiB, $running running"
fi

# What to look for once they are gone.
$P ps -a --format '{{.ID}} {{.Pid}}' | grep . >"$work/containers" || true
cut -d' ' -f1 "$work/containers" | cat - "$work/ids" 2>/dev/null | grep . | sort -u >"$work/allids"
sed 's/^\(.\{10\}\).*/pr\1/' "$work/allids" >"$work/hostifs"

echo "== removing them"
t3=$(now)
remove_all || echo "FAIL: containers left after 10 rounds of rm"
t4=$(now)
echo "   removed in $(secs "$t3" "$t4") s"
trap - EXIT

# Leftovers, as make soak counts them, restricted to what this run made.
count() { local n; n=$(eval "$1" 2>/dev/null | wc -l); echo "$n"; }
sleep 1
mounts=$(count "grep -F -f $work/allids /proc/self/mountinfo")
links() { # this run's bridges and host-side veths still on the host
	ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' >"$work/links.now"
	grep -E -x "$BRIDGE(-[0-9]+)?" "$work/links.now"
	grep -x -F -f "$work/hostifs" "$work/links.now"
}
links=$(count links)
rules=$(count "iptables-save | grep -F -- '$BRIDGE'; iptables-save -t nat | grep -F -- '$BRIDGE'")
chain=$(iptables -S PIRUN-FORWARD >/dev/null 2>&1 && echo yes || echo no)
[ "$chain" = "$ipt_chain_before" ] && chains=0 || chains=1
cgroup_ids() { # container cgroups under /pirun in every hierarchy (ls, not a glob: tens of thousands)
	local d
	for d in /sys/fs/cgroup/*/pirun /sys/fs/cgroup/pirun; do [ -d "$d" ] && ls "$d"; done | grep -x '[0-9a-f]\{64\}'
}
cgroups=$(count "cgroup_ids | grep -F -f $work/allids")
echo "   container cgroups on the host: $cgroups0 before, $(cgroup_ids | wc -l) after (host-wide: counts others' too)"
allocs=$(count "find $state/network -path '*/ips/*' -type f")
records=$(count "ls $state/containers $state/names $state/runc | grep -v ':$' | grep -v '^$'")
# A process of theirs still alive is in one of their cgroups.
procs=$(count "awk '\$2 > 0 { print \"/proc/\" \$2 \"/cgroup\" }' $work/containers | xargs -r grep -l -s -F -f $work/allids")
neigh=$(count "ip neigh show | grep -E ' dev $BRIDGE(-[0-9]+)? '")
sysctls_after=$(sysctls)
[ "$sysctls_after" = "$sysctls_before" ] && sysdiff=0 || { sysdiff=1; echo "   sysctls before: $sysctls_before"; echo "   sysctls after:  $sysctls_after"; }
settle 5
echo "   after removal (caches dropped): Slab $(( ($(meminfo Slab) - slab0) / 1024 )) MiB and MemAvailable $(( (avail0 - $(meminfo MemAvailable)) / 1024 )) MiB from before the run"
echo "   network namespaces on the host: $netns0 before, $(lsns -n -t net | wc -l) after (host-wide: counts others' too)"
echo "left: mounts $mounts, links $links, iptables rules $rules, chains $chains, cgroups $cgroups, allocations $allocs, records $records, processes $procs, neighbours $neigh, sysctls changed $sysdiff"
drop_state
rm -rf "$work"
[ -z "$failed" ] || exit 1
[ "$NETWORK" != bridge ] || [ "$ok" -eq "$N" ] || { echo "FAIL: $ok of $N answered"; exit 1; }
[ "$mounts$links$rules$chains$cgroups$allocs$records$procs$neigh$sysdiff" = "0000000000" ]
