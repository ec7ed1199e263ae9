package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

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
