// Package testutil holds the helpers that pirun's tests share: gates for
// root and kernel features, each with a clear skip message.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequiresRoot skips t unless the test runs as root. CI runs as root, so
// there every root-only test runs.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test needs root (namespaces, mounts, netlink, iptables); run it as root, as CI does")
	}
}

// RequiresBinary skips t unless name is on PATH.
func RequiresBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipping: %s is not installed (CI installs it in .ci/run)", name)
	}
	return p
}
