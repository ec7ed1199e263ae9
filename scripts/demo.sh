#!/usr/bin/env bash
# make demo: spawn N web servers, fetch a page from every one, print a
# summary, remove them. Requests go only to the containers' own addresses on
# pirun's bridge, each bounded in time.
set -euo pipefail
PIRUN=${PIRUN:-bin/pirun}
N=${N:-100}
IMAGE=${IMAGE:-rpi-busybox-httpd}

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
cleanup() { $PIRUN rm -f --all >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== spawning $N containers of $IMAGE"
t0=$(date +%s.%N)
$PIRUN spawn -q -n "$N" --name demo "$IMAGE" >/dev/null
t1=$(date +%s.%N)
echo "   started in $(secs "$t0" "$t1") s"

ips=$($PIRUN ps --format '{{.IP}}')
echo "== fetching http://IP/ from every container"
ok=$(printf '%s\n' $ips | xargs -P 16 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 http://{}/ | grep -c '^200$' || true)
t2=$(date +%s.%N)
total=$(printf '%s\n' $ips | grep -c . || true)
echo "   $ok of $total containers answered HTTP 200 ($(secs "$t0" "$t2") s after the spawn began)"
first=$(printf '%s\n' $ips | head -1)
echo "== the page of the first one ($first):"
curl -s --max-time 5 "http://$first/" | sed -n '1,12p'

echo "== removing them"
t3=$(date +%s.%N)
$PIRUN rm -f --all
trap - EXIT
t4=$(date +%s.%N)
echo "   removed in $(secs "$t3" "$t4") s"
left=$($PIRUN ps -a -q | wc -l)
echo "== summary: $ok/$N answered, $left containers left"
[ "$ok" -eq "$N" ] && [ "$left" -eq 0 ]
