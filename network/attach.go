package network

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// containerIf is the name of the container's end of the veth pair.
const containerIf = "eth0"

// HostIfName is the name of a container's host-side veth: "pr" and the
// first 10 characters of its id (ids are 64 hex characters).
func HostIfName(containerID string) string {
	return "pr" + containerID[:min(10, len(containerID))]
}

// Attach connects the network namespace at nsPath (e.g.
// /proc/PID/task/TID/ns/net) to the bridge of ep's slice: a veth pair whose
// host end ep.HostIf joins the bridge and whose peer is created directly
// inside the namespace as eth0, with ep.Address and a default route via ep.Gateway; lo
// is brought up too. Neither end gets an IPv6 link-local address. It works
// from any thread, whatever its namespace. On failure it deletes the veth
// pair.
func (b *Bridge) Attach(ctx context.Context, ep Endpoint, nsPath string) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network %s: container %q: attach: %w", b.name, ep.ContainerID, err)
	}
	if _, ok := b.sliceOfBridge(ep.Network); !ok {
		return fmt.Errorf("network %s: container %q: endpoint is on bridge %q, not one of this network's: %w", b.name, ep.ContainerID, ep.Network, ErrInvalidConfig)
	}
	if !ep.Address.IsValid() || !ep.Gateway.IsValid() || ep.HostIf == "" {
		return fmt.Errorf("network %s: container %q: incomplete endpoint %+v: %w", b.name, ep.ContainerID, ep, ErrInvalidConfig)
	}
	k, ok := b.r.sliceOf(ep.Address.Addr())
	if !ok || ep.Network != b.bridgeName(k) {
		return fmt.Errorf("network %s: container %q: address %s is not on bridge %s's slice of %s: %w",
			b.name, ep.ContainerID, ep.Address, ep.Network, b.subnet, ErrInvalidConfig)
	}
	brName := b.bridgeName(k)
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("network %s: container %q: open namespace %s: %w", b.name, ep.ContainerID, nsPath, err)
	}
	defer ns.Close()
	br, err := b.nl.get().LinkByName(brName)
	if err != nil {
		return fmt.Errorf("network %s: container %q: look up bridge %s (was the address allocated?): %w", b.name, ep.ContainerID, brName, err)
	}

	// Made down and without a master (netlink's LinkAdd would set one in a
	// second request, outside the rollback below), then configured.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = ep.HostIf
	attrs.MTU = br.Attrs().MTU
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: containerIf, PeerNamespace: netlink.NsFd(int(ns)), PeerTxQLen: -1}
	err = b.nl.get().LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// The container's previous veth, whose namespace the kernel has
		// not finished tearing down (a restart right after its init
		// died): its name is this container's, so it goes.
		if derr := b.deleteVeth(ep); derr == nil {
			err = b.nl.get().LinkAdd(veth)
		}
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("network %s: container %q: veth %s or %s in %s already exists: %w", b.name, ep.ContainerID, ep.HostIf, containerIf, nsPath, err)
		}
		return fmt.Errorf("network %s: container %q: create veth %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	defer func() {
		if err != nil {
			if derr := b.deleteVeth(ep); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	// A bridge port has no use for an address: no IPv6 link-local either,
	// so no duplicate address detection, router solicitation or multicast
	// reports for it.
	if err := b.nl.get().LinkSetIP6AddrGenMode(veth, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("network %s: container %q: no IPv6 address on %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	// Nor IPv6 at all: with it on, bringing the port up adds a multicast
	// route (ff00::/8) for it to the host's IPv6 table, in a list that the
	// kernel walks at each insertion (fib6_add_rt2node), a start cost that
	// grows with every veth on the host (seen in a profile of the 10,000
	// container run). Without IPv6 on the host (no such file) there is
	// nothing to turn off.
	if err := b.inHost(func() error {
		return writeSysctl(b.sysctlDir, "net/ipv6/conf/"+ep.HostIf+"/disable_ipv6", 1)
	}); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("network %s: container %q: turn IPv6 off on %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	if err := b.nl.get().LinkSetMasterByIndex(veth, br.Attrs().Index); err != nil {
		if errors.Is(err, unix.EXFULL) {
			return fmt.Errorf("network %s: container %q: bridge %s: %w (ports pirun did not add?): %w", b.name, ep.ContainerID, brName, ErrBridgeFull, err)
		}
		return fmt.Errorf("network %s: container %q: attach %s to bridge %s: %w", b.name, ep.ContainerID, ep.HostIf, brName, err)
	}
	if err := b.nl.get().LinkSetUp(veth); err != nil {
		return fmt.Errorf("network %s: container %q: set %s up: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}

	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("network %s: container %q: netlink in %s: %w", b.name, ep.ContainerID, nsPath, err)
	}
	defer h.Close()
	if err := loopbackUp(h); err != nil {
		return fmt.Errorf("network %s: container %q: %w", b.name, ep.ContainerID, err)
	}
	eth0, err := h.LinkByName(containerIf)
	if err != nil {
		return fmt.Errorf("network %s: container %q: look up %s: %w", b.name, ep.ContainerID, containerIf, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(ep.Address)}); err != nil {
		return fmt.Errorf("network %s: container %q: add %s to %s: %w", b.name, ep.ContainerID, ep.Address, containerIf, err)
	}
	// The network is IPv4 only: eth0 gets no IPv6 link-local address. With
	// one, each container coming up sends router solicitations, multicast
	// reports and duplicate address probes that the bridge floods to every
	// other container on it: a start cost growing with the bridge's ports
	// (3 ms at the first, 17 ms at the 1,000th, measured).
	if err := h.LinkSetIP6AddrGenMode(eth0, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("network %s: container %q: no IPv6 address on %s: %w", b.name, ep.ContainerID, containerIf, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("network %s: container %q: set %s up: %w", b.name, ep.ContainerID, containerIf, err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: ep.Gateway.AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("network %s: container %q: add default route via %s: %w", b.name, ep.ContainerID, ep.Gateway, err)
	}
	return nil
}

// SetupLoopback brings lo up in the network namespace at nsPath: the whole
// network of a container run with --network none.
func SetupLoopback(nsPath string) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	if err := loopbackUp(h); err != nil {
		return fmt.Errorf("namespace %s: %w", nsPath, err)
	}
	return nil
}

func loopbackUp(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up lo: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}
