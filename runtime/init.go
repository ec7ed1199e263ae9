package runtime

import (
	"os"

	// The device-rules manager (cgroup v1 devices controller, v2 eBPF)
	// registers itself with the cgroups package when imported.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor joins the container's namespaces before the
	// Go runtime starts, in the re-executed init only (it does nothing
	// unless libcontainer's environment is set).
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// IsInit reports whether this process is a container's init, re-executed
// by libcontainer from the program that starts containers.
func IsInit() bool {
	return len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != ""
}

// Init runs the container's init and never returns. A program that embeds
// pirun's runtime calls it first thing in main (or in an init func):
//
//	if runtime.IsInit() { runtime.Init() }
func Init() {
	libcontainer.Init()
}
