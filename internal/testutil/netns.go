package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/vishvananda/netlink"
)

const netnsEnv = "PIRUN_TEST_PRIVATE_NETNS"

// RunInPrivateNetns runs the test binary again in a fresh network namespace
// of its own (as root), so that bridges, veths and iptables rules made by the
// tests never touch the host's network, and returns its exit code. In that
// child, and when not root (the tests then skip), it returns ok=false and
// the caller runs the tests itself. Call it from TestMain:
//
//	if code, ok := testutil.RunInPrivateNetns(); ok { os.Exit(code) }
func RunInPrivateNetns() (code int, ok bool) {
	if os.Geteuid() != 0 {
		return 0, false
	}
	if os.Getenv(netnsEnv) != "" {
		// The child: the new namespace has only lo, and it is down.
		if lo, err := netlink.LinkByName("lo"); err == nil {
			_ = netlink.LinkSetUp(lo)
		}
		return 0, false
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		if ee, isExit := err.(*exec.ExitError); isExit {
			return ee.ExitCode(), true
		}
		fmt.Fprintln(os.Stderr, "testutil: re-run the tests in a private network namespace:", err)
		return 2, true
	}
	return 0, true
}
