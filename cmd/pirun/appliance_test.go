package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/testutil"
)

// Appliance mode: with / read-only and --root and --state on writable
// places, pirun pulls, spawns, lists and removes. The read-only root is made
// in a mount namespace of the test's own, so the host is not touched.
func TestCLIReadOnlyRoot(t *testing.T) {
	testutil.RequiresRoot(t)
	unshare := testutil.RequiresBinary(t, "unshare")
	archive := testutil.DefaultImageArchive(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := `set -e
mount --make-rprivate /
mount -t tmpfs -o size=64m tmpfs /run
mkdir -p /run/pirun-root /run/pirun-state
mount -o remount,bind,ro /
if touch /pirun-ro-probe 2>/dev/null; then echo "/ is writable"; exit 1; fi
P="$SELF --root /run/pirun-root --state /run/pirun-state"
$P pull oci-archive:$ARCHIVE >/dev/null
$P spawn -q -n 3 --name ro rpi-busybox-httpd >/dev/null
echo "running: $($P ps -q | wc -l)"
$P rm -f --all
echo "left: $($P ps -a -q | wc -l)"
`
	cmd := exec.Command(unshare, "--mount", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "PIRUN_TEST_MAIN=1", "SELF="+self, "ARCHIVE="+archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("read-only root: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "running: 3") || !strings.Contains(string(out), "left: 0") {
		t.Errorf("read-only root: %s", out)
	}
}

// A full disk under --state: spawn fails with the cause and leaves nothing.
// The small tmpfs is mounted in a mount namespace of the test's own.
func TestCLIStateDiskFull(t *testing.T) {
	testutil.RequiresRoot(t)
	unshare := testutil.RequiresBinary(t, "unshare")
	archive := testutil.DefaultImageArchive(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := `mount --make-rprivate /
mount -t tmpfs -o size=64k tmpfs "$DIR/state" || exit 2
P="$SELF --root $DIR/root --state $DIR/state"
$P pull oci-archive:$ARCHIVE >/dev/null || exit 3
$P spawn -q -n 20 --network none rpi-busybox-httpd >/dev/null 2>"$DIR/err"
echo "spawn exit: $?"
echo "left: $($P ps -a -q | wc -l) $(ls "$DIR/state/runc" | wc -l)"
`
	if err := os.MkdirAll(dir+"/state", 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "PIRUN_TEST_MAIN=1", "SELF="+self, "ARCHIVE="+archive, "DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	msg, _ := os.ReadFile(dir + "/err")
	if !strings.Contains(string(out), "spawn exit: 125") || !strings.Contains(string(msg), "no space left on device") {
		t.Errorf("spawn on a full state disk: %s / %s", out, msg)
	}
	if !strings.Contains(string(out), "left: 0 0") {
		t.Errorf("a failed spawn on a full disk left containers behind: %s", out)
	}
}

// cgroup v2: this host is hybrid (v1 controllers, cgroup2 at
// /sys/fs/cgroup/unified), so the test shows pirun a cgroup2 hierarchy
// alone at /sys/fs/cgroup, in a mount namespace of its own, as a v2-only
// distribution does: a fresh child cgroup of the cgroup2 root, bind-mounted
// there, so nothing outside it changes. libcontainer then takes its v2
// path (fs2: one hierarchy, devices through eBPF). The controllers stay
// bound to v1 here, so limits cannot be set: a spawn with one must fail
// cleanly.
func TestCLICgroupV2(t *testing.T) {
	testutil.RequiresRoot(t)
	unshare := testutil.RequiresBinary(t, "unshare")
	archive := testutil.DefaultImageArchive(t)
	unified := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(unified + "/cgroup.controllers"); err != nil {
		unified = "/sys/fs/cgroup"
		if _, err := os.Stat(unified + "/cgroup.controllers"); err != nil {
			t.Skip("no cgroup2 hierarchy on this host")
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, err := os.MkdirTemp(unified, "pirun-v2test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever the test left below its cgroup, deepest first.
		var dirs []string
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil {
				t.Errorf("remove test cgroup %s: %v", dirs[i], err)
			}
		}
	})
	script := `mount --make-rprivate /
mount --bind "$BASE" /sys/fs/cgroup || exit 2
P="$SELF --root $DIR/root --state $DIR/state"
$P pull oci-archive:$ARCHIVE >/dev/null || exit 3
$P spawn -q -n 3 --network none --name v2 rpi-busybox-httpd >/dev/null || exit 4
$P spawn -q -n 2 --network none --name v2g --cgroup group rpi-busybox-httpd >/dev/null || exit 5
echo "running: $($P ps -q | wc -l)"
for pid in $($P ps --format '{{.Pid}}'); do grep '^0::' /proc/$pid/cgroup; done
$P spawn -q -n 2 --network none --name v2m --memory 8m rpi-busybox-httpd >/dev/null 2>"$DIR/err"
echo "limit spawn exit: $?"
$P rm -f --all >/dev/null
echo "left: $($P ps -a -q | wc -l) cgroups: $(find /sys/fs/cgroup -mindepth 1 -type d | wc -l)"
`
	cmd := exec.Command(unshare, "--mount", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "PIRUN_TEST_MAIN=1", "SELF="+self, "ARCHIVE="+archive, "DIR="+dir, "BASE="+base)
	out, err := cmd.CombinedOutput()
	msg, _ := os.ReadFile(dir + "/err")
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out, msg)
	}
	got := string(out)
	if !strings.Contains(got, "running: 5") {
		t.Errorf("containers on cgroup v2: %s", got)
	}
	rel := strings.TrimPrefix(base, unified)
	own := strings.Count(got, "0::"+rel+"/pirun/") - strings.Count(got, "0::"+rel+"/pirun/g-")
	if own != 3 || strings.Count(got, "0::"+rel+"/pirun/g-") != 2 {
		t.Errorf("want 3 containers in %s/pirun/<id> and 2 in %s/pirun/g-<group>/<id>:\n%s", rel, rel, got)
	}
	if !strings.Contains(got, "limit spawn exit: 125") || !strings.Contains(string(msg), "memory.max") {
		t.Errorf("a memory limit without the memory controller: %s / %s", got, msg)
	}
	if !strings.Contains(got, "left: 0 cgroups: 0") {
		t.Errorf("rm on cgroup v2 left something: %s", got)
	}
}
