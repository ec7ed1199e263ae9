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
package network
