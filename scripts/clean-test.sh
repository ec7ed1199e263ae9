#!/usr/bin/env bash
# make clean-test: remove what an interrupted test run left behind.
# Test state lives in temporary directories (t.TempDir); containers there
# outlive a killed test binary. This removes them with pirun itself, then
# the empty cgroup parents and the test fixtures. It never touches the
# default state (/run/pirun): use 'pirun rm -f --all' for that.
set -u
cd "$(dirname "$0")/.."
[ -x bin/pirun ] || make build >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
found=0
while IFS= read -r runc; do
	state=$(dirname "$runc")
	[ -d "$state/containers" ] || continue
	found=$((found + 1))
	echo "removing test containers in $state"
	bin/pirun --root "$scratch/root" --state "$state" rm -f --all || true
done < <(find /tmp -maxdepth 5 -type d -name runc -path '/tmp/*' 2>/dev/null)
for d in /sys/fs/cgroup/*/pirun /sys/fs/cgroup/pirun; do
	[ -d "$d" ] && rmdir "$d" 2>/dev/null
done
rm -rf /tmp/pirun-runtime-test-* 2>/dev/null
echo "clean-test: $found test state directories cleaned"
