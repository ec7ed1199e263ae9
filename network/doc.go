// Package network gives each pirun container its own network namespace and
// an address: on a pirun bridge (Bridge) or on the host's LAN (Macvlan).
// Both are a Driver: Check, Allocate, Attach, Release.
//
// The bridge driver: a network (default pirun0, 10.123.0.0/16) is cut into
// slices of a /22, one Linux bridge each: pirun0 for 10.123.0.0/22, pirun0-1
// for 10.123.4.0/22, … pirun0-63. A slice's gateway (.1 of the /22) is on
// its bridge and its containers get addresses with that /22 and a default
// route through that gateway. Addresses are allocated persistently under a
// flock in the state directory, round-robin, so a slice fills before the
// next bridge is made; the last release in a slice removes its bridge. One
// veth pair per container, whose peer is created directly inside the
// container's network namespace as eth0. pirun's own iptables chain
// (go-iptables) accepts each bridge's traffic even where Docker has set the
// FORWARD policy to DROP. The chain and any sysctl pirun raised are removed
// when the network's last address is released.
//
// Why slices of a /22: a Linux bridge holds at most 1,023 ports, and a /22
// holds 1,021 containers. All bridges are on the host, so the host reaches
// every container through its slice's connected route, and a broadcast
// (an ARP request, an IPv6 router solicitation) floods at most 1,021 ports
// instead of every container on the host: with one flat layer 2 network
// joining the bridges, the host's first request to each of n containers
// would be an ARP request copied to all n, n² copies in all. The cost is
// that containers on different bridges reach each other only through the
// host's routing (net.ipv4.ip_forward=1, which pirun does not set), as
// they would reach any other network.
//
// Limits are checked before anything changes: a network with no room for
// all the containers asked for fails with ErrSubnetFull (Check, then
// Allocate under the lock), and a bridge that refuses a port with
// ErrBridgeFull.
//
// Links, addresses and routes go through vishvananda/netlink; namespaces
// through vishvananda/netns; rules through coreos/go-iptables.
//
// The namespace that calls NewBridge is the host: the Bridge keeps a
// netlink handle bound to it and runs iptables and /proc/sys writes on a
// thread it moves into it, so every method works from any thread, including
// one that has entered or unshared another namespace.
//
// State, under stateDir/<network name>/ (Endpoint.Network is the bridge of
// the endpoint's slice, one of the network's, so rm finds it again with
// WithBridgeName. Records made before subnets had slices hold the one bridge
// named like the network, and an address with the subnet's prefix length:
// their addresses are freed as any other, and that bridge goes with the
// network's last address):
//
//	lock           flock held for every read-modify-write, by every process
//	ips/<addr>     one file per reserved address, content = container id,
//	               created complete or not at all (temp file + link)
//	last_reserved  where the next search starts (round-robin, like CNI host-local)
//	sysctl.json    sysctls pirun raised (neighbour thresholds, backlog): original and set value
//
// The neighbour (ARP) table is shared by all namespaces and its default
// gc_thresh3 of 1024 is too small for a thousand containers: Allocate raises
// gc_thresh3 to 2n+256 and gc_thresh2 to ¾ of that for the n allocations of
// the whole network, never lowering anything; the last Release restores the
// original values unless someone else changed them meanwhile. Likewise
// net.core.netdev_max_backlog, raised to three times the containers of the
// fullest bridge: a broadcast on a bridge (the host's ARP request) puts one
// copy per port into the sending CPU's receive queue at once, and past the
// default 1,000 the copies to the bridge's oldest ports were dropped, so
// the first 20 containers of a full bridge never answered. Only the
// initial network namespace shows these sysctls; in another one they are
// left alone.
//
// Inspect and Prune (pirun network ls and prune) show what a network holds
// on the host and remove what no existing container uses: allocations of
// containers that are gone, their veths, bridges of empty slices (unless
// links are still attached), rules of bridges that are gone, and, with no
// allocation left, the chain and the sysctls.
//
// # Macvlan
//
// The macvlan driver puts containers on a LAN the host is on: each gets a
// bridge-mode macvlan link on the parent interface (a NIC, a bridge, a
// VLAN interface), created directly inside its namespace as eth0, with an
// address of the LAN's subnet and a default route through its gateway, and
// the LAN sees it as a host of its own. No iptables rule and no sysctl: the
// kernel switches between the macvlans of a parent and the wire. A macvlan's
// MAC follows its address (02:70 and the address's four bytes), so a
// restarted container keeps it and neighbour caches stay right.
//
// The subnet and gateway are the user's (MacvlanConfig): by default the
// subnet of the parent's own address, and its default route's gateway or
// the subnet's first address. Addresses are allocated like the bridge's
// (one file per address under a flock, round-robin), never the gateway's or
// one the host has on the parent. Nothing tells pirun which addresses other
// hosts of the LAN use: give it a subnet, or a part of one, that nobody
// else allocates from (not the DHCP server's range).
//
// A macvlan's parent never receives what its macvlans send, so the host
// cannot reach its own containers through the parent. The first Allocate
// of a network gives the host a macvlan of its own on the parent,
// pirun-mv<parent's ifindex>, with an address of the subnet as a /32, and
// each container a /32 route through it: more specific than the parent's
// route to the LAN, if it has one. The last Release deletes that link (its
// address and routes with it).
//
// The neighbour table thresholds are left alone: past about 380 containers
// on one macvlan network, raise net.ipv4.neigh.default.gc_thresh3.
//
// State, under stateDir/macvlan/<parent>/:
//
//	lock, ips/<addr>, last_reserved   as the bridge's; ips/<addr> of the
//	                                  host-side link's address holds "host"
//	network.json                      subnet, gateway, host-side link and its
//	                                  address: written before the link is
//	                                  made, removed after it is deleted, so
//	                                  rm, or the next Allocate, finishes the
//	                                  job after a crash
//
// Endpoint.Driver and Endpoint.Parent tell rm which driver and network an
// endpoint is on. The parent belongs to one state directory: a second one
// finds the host-side link holding another address and is refused.
//
// # Published ports
//
// Publish makes a host port ([IP:]HOSTPORT, tcp or udp, see ParsePortSpec)
// lead to a port of a group of containers, without any proxy process: the
// kernel's NAT does it all. In the nat table:
//
//	PREROUTING ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PIRUN-PORTS
//	OUTPUT     -m addrtype --dst-type LOCAL -j PIRUN-PORTS
//	PIRUN-PORTS        one rule per published host port:
//	                   [-d IP] -p tcp --dport 8080 -j PIRUN-TCP8080-3f6d1c
//	PIRUN-TCP8080-…    one DNAT rule per container; rule i of n matches
//	                   -m statistic --mode nth --every n-i --packet 0,
//	                   the last one everything: new connections go to the
//	                   containers in turn, an exact split (iptables-nft makes
//	                   it nftables' numgen)
//	PIRUN-POSTROUTING  per bridge behind a published port, MASQUERADE of
//	                   127.0.0.0/8 sources (for 127.0.0.1) and of the
//	                   bridge's own subnet when DNATed (hairpin)
//
// Removing containers rewrites their ports before the containers stop: a
// new chain without them under a new name, its dispatch rule, and the
// deletion of the old rule and chain, in one iptables-restore transaction,
// so no new connection ever goes to a container being removed, nor finds
// the port closed. The last container of a port removes the port. A port's
// chain is written with iptables-restore, not go-iptables: go-iptables
// runs iptables once per rule (1,000 rules took 8 s, against 0.07 s) and
// has no transactions; everything else goes through go-iptables.
//
// Reaching a port at 127.0.0.1 needs route_localnet=1 on the bridge (the
// kernel otherwise refuses to route a 127.0.0.0/8 source out of it) and the
// MASQUERADE (the container could not answer 127.0.0.1). A container
// reaching a published port through the host (hairpin) needs the host to
// forward from the bridge back into it (forwarding=1 on the bridge: not the
// global ip_forward), hairpin mode on the container's bridge port (for a
// container reaching itself) and the MASQUERADE. Where pirun raises those
// sysctls it adds a guard to the filter table too: PIRUN-PORTS-INPUT drops
// what the bridge sends to 127.0.0.0/8 other than replies (route_localnet
// would let a container reach the host's loopback services,
// CVE-2020-8558), and PIRUN-PORTS-FORWARD drops what the bridge would now
// have forwarded to other networks other than published-port traffic, so
// the host still routes no container traffic off the machine.
//
// A port is refused before anything starts (ErrPortInUse, CheckPorts) when
// this state directory publishes it, another one has a rule for it in
// PIRUN-PORTS, or a socket of the host is bound to it (a bind test).
// State, under stateDir/ports/, shared by the bridges of the state
// directory, with its own flock held for every change:
//
//	<proto>-<ip>-<port>.json  a published port: its chain and containers
//	host.json                 the sysctls pirun raised (original and set
//	                          value) and the rules it added for the ports
//
// Each is written before the change it records, so rm after a crash
// removes what the record names. The sysctls are restored when no port
// needs them, unless someone else changed them meanwhile.
package network
