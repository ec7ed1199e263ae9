// Package network gives each pirun container its own network namespace and
// an address on a pirun bridge.
//
// The bridge driver: one Linux bridge (default pirun0, 10.123.0.0/16,
// gateway .1 on the bridge), addresses allocated persistently under a flock
// in the state directory, one veth pair per container whose peer is created
// directly inside the container's network namespace as eth0. pirun's own
// iptables chains (go-iptables) accept the bridge's traffic even where
// Docker has set the FORWARD policy to DROP. The bridge, the chains and any
// sysctl pirun raised are removed when the last address is released.
//
// Links, addresses and routes go through vishvananda/netlink; namespaces
// through vishvananda/netns; rules through coreos/go-iptables.
//
// The namespace that calls NewBridge is the host: the Bridge keeps a
// netlink handle bound to it and runs iptables and /proc/sys writes on a
// thread it moves into it, so every method works from any thread, including
// one that has entered or unshared another namespace.
//
// State, under stateDir/<bridge name>/ (Endpoint.Network is the bridge name,
// so rm can find it again with WithBridgeName):
//
//	lock           flock held for every read-modify-write, by every process
//	ips/<addr>     one file per reserved address, content = container id,
//	               created complete or not at all (temp file + link)
//	last_reserved  where the next search starts (round-robin, like CNI host-local)
//	sysctl.json    neighbour-table thresholds pirun raised: original and set value
//
// The neighbour (ARP) table is shared by all namespaces and its default
// gc_thresh3 of 1024 is too small for a thousand containers: Allocate raises
// gc_thresh3 to 2n+256 and gc_thresh2 to ¾ of that for n allocations, never
// lowering anything; the last Release restores the original values unless
// someone else changed them meanwhile. Only the initial network namespace
// shows these sysctls; in another one they are left alone.
package network
