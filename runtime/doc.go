// Package runtime starts, lists, stops and removes pirun containers.
//
// It is the only package of pirun that imports runc's libcontainer (whose Go
// API is not covered by SemVer): everything libcontainer-specific stays
// behind this package's small API.
//
// # How a container starts
//
// A pirun binary (or any program embedding this package) re-executes itself
// as the container's init: its main must begin with
//
//	if runtime.IsInit() { runtime.Init() }
//
// Each container is started from a short-lived, locked OS thread that first
// unshares its own mount and network namespaces (no network namespace for
// the host network). In that private mount namespace the thread attaches
// the image's read-only overlay (lowerdirs only: nothing is copied per
// container), a clone of one detached overlay mount made once per spawn
// group, so that a thousand containers share one superblock (see
// sharedRootfs; older kernels mount one per container); in that network
// namespace the network package wires eth0 (a
// veth on a bridge, or a macvlan on the LAN's interface). libcontainer then forks the container's init from this
// thread, so the init inherits both, and the thread dies with its goroutine
// once the container runs. The host's mount table never holds a
// per-container mount, and a container that dies takes its rootfs mount,
// network namespace and veth with it: nothing is left for a crash to leak
// but the small records that rm clears.
//
// There is no daemon and no shim: containers are detached and keep running
// after the pirun process exits; stdout and stderr go straight to a log file
// (the file descriptor is handed to the container, nothing copies it).
//
// # State
//
// Under the state directory (default /run/pirun, a tmpfs: containers do not
// survive a reboot, and neither does their state):
//
//	containers/<id>/state.json  pirun's record, written atomically
//	containers/<id>/lock        flock held while the container is made or removed
//	containers/<id>/log         the container's stdout and stderr
//	containers/<id>/rootfs      the mount point of the overlay (empty on the host)
//	names/<name>                a symlink to the id: names are reserved atomically
//	runc/<id>/                  libcontainer's own state
//	network/                    the network package's state
package runtime
