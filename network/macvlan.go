package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/fsutil"
)

// DriverMacvlan is Endpoint.Driver for an endpoint of a macvlan network.
const DriverMacvlan = "macvlan"

// hostMacvlanPrefix names the host's own macvlan link on a parent:
// "pirun-mv" and the parent's interface index (at most 15 characters).
const hostMacvlanPrefix = "pirun-mv"

func hostMacvlanName(parentIndex int) string {
	return hostMacvlanPrefix + strconv.Itoa(parentIndex)
}

func isHostMacvlanName(name string) bool {
	num, ok := strings.CutPrefix(name, hostMacvlanPrefix)
	if !ok || num == "" || num[0] == '0' || len(name) > unix.IFNAMSIZ-1 {
		return false
	}
	_, err := strconv.ParseUint(num, 10, 31)
	return err == nil
}

// MacvlanConfig is a macvlan network: a parent interface of the host and
// the IPv4 subnet of the LAN it is on. Containers get addresses of the
// subnet and appear on the LAN as hosts of their own.
type MacvlanConfig struct {
	// Parent is the host's interface the containers' links sit on (a NIC,
	// a bridge, a VLAN interface, …). Required.
	Parent string `json:"parent"`
	// Subnet is the LAN's subnet. Default: the one in use while the
	// parent's network has containers, else the subnet of the parent's
	// own IPv4 address; a parent without one needs it.
	Subnet netip.Prefix `json:"subnet,omitzero"`
	// Gateway is the containers' default route, an address of Subnet.
	// Default: the one in use while the network has containers, else the
	// gateway of the host's default route through the parent if it is in
	// Subnet, else Subnet's first address. It is never given to a
	// container.
	Gateway netip.Addr `json:"gateway,omitzero"`
}

// Macvlan is the macvlan driver: one network per parent interface of the
// host ("the host" is the network namespace that called NewMacvlan),
// addresses allocated under stateDir/macvlan/<parent>. Its methods may be
// called from any goroutine and any OS thread, whatever network namespace
// that thread is in. Several Macvlans, in one process or in several, may
// share a state directory.
type Macvlan struct {
	parent  string
	subnet  netip.Prefix // as asked; may be zero
	gateway netip.Addr   // as asked; may be zero
	dir     string
	log     *slog.Logger

	hostNS netns.NsHandle
	nl     handle // *netlink.Handle bound to hostNS
}

var (
	_ Driver = (*Macvlan)(nil)
	_ Driver = (*Bridge)(nil)
)

// NewMacvlan returns the macvlan driver of the network on cfg.Parent,
// whose state lives in stateDir/macvlan/<parent>. The calling thread's
// network namespace becomes the host namespace, where the parent is.
// Nothing is created on the host until Allocate. Of the Options, only
// WithLogger applies (the subnet is cfg.Subnet). Close releases the handles
// NewMacvlan opened.
func NewMacvlan(stateDir string, cfg MacvlanConfig, opts ...Option) (_ *Macvlan, err error) {
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if err := validIfName(cfg.Parent); err != nil {
		return nil, fmt.Errorf("macvlan network: parent: %w", err)
	}
	if isHostMacvlanName(cfg.Parent) {
		return nil, fmt.Errorf("macvlan network: parent %s is pirun's own host-side link: %w", cfg.Parent, ErrInvalidConfig)
	}
	if cfg.Subnet.IsValid() && (!validSubnet(cfg.Subnet) || cfg.Subnet.Masked() != cfg.Subnet) {
		return nil, fmt.Errorf("macvlan network on %s: subnet %s: want an IPv4 network address of at most /30: %w", cfg.Parent, cfg.Subnet, ErrInvalidConfig)
	}
	if cfg.Gateway.IsValid() && !cfg.Gateway.Is4() {
		return nil, fmt.Errorf("macvlan network on %s: gateway %s: want an IPv4 address: %w", cfg.Parent, cfg.Gateway, ErrInvalidConfig)
	}
	if stateDir == "" {
		return nil, fmt.Errorf("macvlan network on %s: empty state directory: %w", cfg.Parent, ErrInvalidConfig)
	}
	m := &Macvlan{
		parent:  cfg.Parent,
		subnet:  cfg.Subnet,
		gateway: cfg.Gateway,
		dir:     filepath.Join(stateDir, macvlanDir, cfg.Parent),
		log:     o.logger,
	}
	if err := os.MkdirAll(filepath.Join(m.dir, ipsDir), 0o700); err != nil {
		return nil, fmt.Errorf("macvlan network on %s: state directory: %w", m.parent, err)
	}
	if m.hostNS, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("macvlan network on %s: host network namespace: %w", m.parent, err)
	}
	h, err := netlink.NewHandleAt(m.hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		m.hostNS.Close()
		return nil, fmt.Errorf("macvlan network on %s: netlink handle: %w", m.parent, err)
	}
	m.nl = newHandle(h)
	return m, nil
}

// Close releases the netlink handle and the namespace reference. It leaves
// the network itself as it is.
func (m *Macvlan) Close() error {
	m.nl.get().Close()
	return m.hostNS.Close()
}

// Parent is the network's parent interface.
func (m *Macvlan) Parent() string { return m.parent }

// macvlanMAC is the MAC address of the macvlan holding a: locally
// administered, 02:70 and a's four bytes, unique on the LAN as long as a
// is. A container restarted on its address gets its MAC back, so the
// neighbour caches of the host and of the LAN's hosts stay right (with a
// new random MAC they would send to the old one until their entry
// expires).
func macvlanMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x70, b[0], b[1], b[2], b[3]}
}

func validSubnet(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() <= 30
}

// plan is what an allocation on the network works with, under the lock.
type plan struct {
	net    *macvlanRecord // the network: as recorded, or to be set up (fresh)
	fresh  bool           // nothing of the network is on the host yet
	parent netlink.Link
	owners map[netip.Addr]string
	taken  map[netip.Addr]bool // never to be given to a container
}

// plan works out the network that n more containers would join and checks
// that they fit: ErrSubnetFull, ErrSubnetOverlap, ErrInvalidConfig (no
// subnet, or one other than the network's in use). Call it under the lock.
func (m *Macvlan) plan(n int) (*plan, error) {
	parent, err := m.nl.get().LinkByName(m.parent)
	if err != nil {
		return nil, fmt.Errorf("macvlan network: parent %s: %w", m.parent, err)
	}
	rec, err := m.readRecord()
	if err != nil {
		return nil, err
	}
	owners, err := m.readOwners()
	if err != nil {
		return nil, err
	}
	p := &plan{net: rec, parent: parent, owners: owners}
	if rec == nil || containerCount(owners) == 0 {
		// No container: the network is set up anew, as asked now (a record
		// left by a crash goes first, see Allocate).
		p.fresh = true
		if p.net, err = m.newNetwork(parent); err != nil {
			return nil, err
		}
	} else if m.subnet.IsValid() && m.subnet != rec.Subnet || m.gateway.IsValid() && m.gateway != rec.Gateway {
		return nil, fmt.Errorf("macvlan network on %s: has %d containers on subnet %s with gateway %s; asked for %s, %s: remove them first: %w",
			m.parent, containerCount(owners), rec.Subnet, rec.Gateway, m.subnet, m.gateway, ErrInvalidConfig)
	}
	p.taken = map[netip.Addr]bool{p.net.Gateway: true}
	for a := range owners {
		p.taken[a] = true
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.nl.get().AddrList(parent, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: list the parent's addresses: %w", m.parent, err)
	}
	for _, a := range addrs {
		if pa, ok := prefixOf(a.IPNet); ok && p.net.Subnet.Contains(pa.Addr()) {
			p.taken[pa.Addr()] = true // the host's own address on the LAN
		}
	}
	need := n
	if p.fresh {
		need++ // the host-side link's address
	}
	free := hostCount(p.net.Subnet)
	for a := range p.taken {
		if a != p.net.Subnet.Addr() && a != lastAddr(p.net.Subnet) && p.net.Subnet.Contains(a) {
			free--
		}
	}
	if need > free {
		return nil, fmt.Errorf("macvlan network on %s: %d more containers do not fit in %s: %d free (gateway, the host's addresses and %d containers take the rest): %w",
			m.parent, n, p.net.Subnet, max(free-(need-n), 0), containerCount(owners), ErrSubnetFull)
	}
	if err := m.checkOverlap(p); err != nil {
		return nil, err
	}
	return p, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	return addrOf(u32(p.Masked().Addr()) | uint32(uint64(1)<<(32-p.Bits())-1))
}

// newNetwork works out the network to set up on parent from what was
// asked and what the host has: see MacvlanConfig for the defaults.
func (m *Macvlan) newNetwork(parent netlink.Link) (*macvlanRecord, error) {
	subnet := m.subnet
	if !subnet.IsValid() {
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.nl.get().AddrList(parent, netlink.FAMILY_V4) })
		if err != nil {
			return nil, fmt.Errorf("macvlan network on %s: list the parent's addresses: %w", m.parent, err)
		}
		for _, a := range addrs {
			if pa, ok := prefixOf(a.IPNet); ok && pa.Addr().Is4() && pa.Bits() <= 30 && a.Scope == int(netlink.SCOPE_UNIVERSE) {
				subnet = pa.Masked()
				break
			}
		}
		if !subnet.IsValid() {
			return nil, fmt.Errorf("macvlan network on %s: no subnet given, and the parent has no IPv4 address to take it from: give the LAN's subnet: %w", m.parent, ErrInvalidConfig)
		}
	}
	gw := m.gateway
	if !gw.IsValid() {
		routes, err := retryDump(func() ([]netlink.Route, error) { return m.nl.get().RouteList(parent, netlink.FAMILY_V4) })
		if err != nil {
			return nil, fmt.Errorf("macvlan network on %s: list the parent's routes: %w", m.parent, err)
		}
		for _, rt := range routes {
			if d, ok := prefixOf(rt.Dst); ok && d.Bits() != 0 {
				continue
			}
			if a, ok := netip.AddrFromSlice(rt.Gw); ok && subnet.Contains(a.Unmap()) {
				gw = a.Unmap()
				break
			}
		}
	}
	if !gw.IsValid() {
		gw = subnet.Addr().Next()
	}
	if !subnet.Contains(gw) || gw == subnet.Addr() || gw == lastAddr(subnet) {
		return nil, fmt.Errorf("macvlan network on %s: gateway %s is not a host address of %s: %w", m.parent, gw, subnet, ErrInvalidConfig)
	}
	return &macvlanRecord{
		Parent:  m.parent,
		Subnet:  subnet,
		Gateway: gw,
		HostIf:  hostMacvlanName(parent.Attrs().Index),
	}, nil
}

// checkOverlap refuses a subnet that overlaps a route of the host other
// than the LAN's own (on the parent) and pirun's (on its host-side link).
func (m *Macvlan) checkOverlap(p *plan) error {
	routes, err := retryDump(func() ([]netlink.Route, error) { return m.nl.get().RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("macvlan network on %s: list routes: %w", m.parent, err)
	}
	for _, rt := range routes {
		dst, ok := prefixOf(rt.Dst)
		if !ok || dst.Bits() == 0 || !dst.Overlaps(p.net.Subnet) || rt.LinkIndex == p.parent.Attrs().Index {
			continue
		}
		dev := ""
		if l, err := m.nl.get().LinkByIndex(rt.LinkIndex); err == nil {
			if l.Attrs().Name == p.net.HostIf {
				continue
			}
			dev = " dev " + l.Attrs().Name
		}
		return fmt.Errorf("macvlan network on %s: subnet %s overlaps route %s%s: %w", m.parent, p.net.Subnet, dst, dev, ErrSubnetOverlap)
	}
	return nil
}

// Check reports, without reserving anything, whether n more containers fit
// on the network now: the errors Allocate would return before it changes
// anything. Allocate checks again under its lock.
func (m *Macvlan) Check(ctx context.Context, n int) error {
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = m.plan(n)
	return err
}

func (m *Macvlan) lock(ctx context.Context) (func(), error) {
	unlock, err := fsutil.Lock(ctx, filepath.Join(m.dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: lock: %w", m.parent, err)
	}
	return unlock, nil
}

// Allocate reserves one address of the subnet per container id, in one
// hold of the state directory's lock, and makes sure the host reaches
// them: the first allocation of the network makes the host-side macvlan
// link (pirun-mv<parent's ifindex>, bridge mode, with an address of the
// subnet as a /32), and each container gets a /32 route through it, which
// wins over the parent's own route to the LAN (a macvlan's parent never
// receives what its macvlans send). It reserves nothing when the subnet
// has no room for all ids (ErrSubnetFull) or overlaps another route of the
// host (ErrSubnetOverlap). On failure it undoes what it did.
func (m *Macvlan) Allocate(ctx context.Context, ids []string) (_ []Endpoint, err error) {
	if len(ids) == 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if id == "" || id == hostOwner || seen[id] {
			return nil, fmt.Errorf("macvlan network on %s: container id %q empty, reserved or given twice: %w", m.parent, id, ErrInvalidConfig)
		}
		seen[id] = true
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	rec, err := m.readRecord()
	if err != nil {
		return nil, err
	}
	if rec != nil {
		owners, err := m.readOwners()
		if err != nil {
			return nil, err
		}
		if containerCount(owners) == 0 {
			// Left by a pirun that died setting the network up or
			// tearing it down: finish the teardown, then start afresh.
			if err := m.teardown(rec); err != nil {
				return nil, err
			}
		}
	}
	p, err := m.plan(len(ids))
	if err != nil {
		return nil, err
	}
	nw := p.net
	if p.fresh {
		// The host's address: the first free one. The record comes
		// first, so that whatever happens next, a Release or the next
		// Allocate removes what it names.
		for a := range subnetHosts(nw.Subnet, netip.Addr{}) {
			if !p.taken[a] {
				nw.HostAddress = a
				break
			}
		}
		if err := m.writeRecord(nw); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				err = errors.Join(err, m.teardown(nw))
			}
		}()
		if _, err := m.reserveAddrs(nw.Subnet, p.taken, []string{hostOwner}); err != nil {
			return nil, err
		}
		p.taken[nw.HostAddress] = true
	}
	host, err := m.ensureHostLink(nw, p.parent)
	if err != nil {
		return nil, err
	}
	addrs, err := m.reserveAddrs(nw.Subnet, p.taken, ids)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, a := range addrs {
				_ = m.deleteRoute(host, a)
			}
			m.unreserve(addrs)
		}
	}()
	eps := make([]Endpoint, len(ids))
	for i, id := range ids {
		route := &netlink.Route{
			LinkIndex: host.Attrs().Index,
			Dst:       ipNet(netip.PrefixFrom(addrs[i], 32)),
			Src:       nw.HostAddress.AsSlice(),
			Scope:     netlink.SCOPE_LINK,
		}
		if err := m.nl.get().RouteReplace(route); err != nil {
			return nil, fmt.Errorf("macvlan network on %s: container %q: route to %s through %s: %w", m.parent, id, addrs[i], nw.HostIf, err)
		}
		eps[i] = Endpoint{
			Network:     m.parent,
			Driver:      DriverMacvlan,
			Parent:      m.parent,
			ContainerID: id,
			Address:     netip.PrefixFrom(addrs[i], nw.Subnet.Bits()),
			Gateway:     nw.Gateway,
			HostIf:      nw.HostIf,
		}
	}
	m.log.Debug("allocated", "parent", m.parent, "subnet", nw.Subnet, "count", len(ids), "in_use", containerCount(p.owners)+len(ids))
	return eps, nil
}

// ensureHostLink makes sure the host-side macvlan of net is on parent,
// holds nw.HostAddress as a /32, has no IPv6 address and is up. A link of
// that name that is something else, or holds another address (another
// state directory's network on the same parent), is refused.
func (m *Macvlan) ensureHostLink(nw *macvlanRecord, parent netlink.Link) (netlink.Link, error) {
	link, err := m.nl.get().LinkByName(nw.HostIf)
	if isLinkNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = nw.HostIf
		attrs.ParentIndex = parent.Attrs().Index
		attrs.HardwareAddr = macvlanMAC(nw.HostAddress)
		err = m.nl.get().LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("macvlan network on %s: create %s: %w", m.parent, nw.HostIf, err)
		}
		m.log.Debug("created host-side macvlan", "parent", m.parent, "link", nw.HostIf)
		link, err = m.nl.get().LinkByName(nw.HostIf)
	}
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: look up %s: %w", m.parent, nw.HostIf, err)
	}
	if mv, ok := link.(*netlink.Macvlan); !ok || mv.ParentIndex != parent.Attrs().Index {
		return nil, fmt.Errorf("macvlan network on %s: link %s is a %s, not a macvlan on %s: %w", m.parent, nw.HostIf, link.Type(), m.parent, ErrInvalidConfig)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.nl.get().AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: list addresses of %s: %w", m.parent, nw.HostIf, err)
	}
	want := netip.PrefixFrom(nw.HostAddress, 32)
	found := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == want {
			found = true
		} else {
			return nil, fmt.Errorf("macvlan network on %s: %s has address %s, want %s (the network of another pirun state directory?): %w",
				m.parent, nw.HostIf, a.IPNet, want, ErrInvalidConfig)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		// Before it is up: no IPv6 link-local address, so no duplicate
		// address detection or router solicitation on the LAN.
		if err := m.nl.get().LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
			return nil, fmt.Errorf("macvlan network on %s: no IPv6 address on %s: %w", m.parent, nw.HostIf, err)
		}
	}
	if !found {
		if err := m.nl.get().AddrAdd(link, &netlink.Addr{IPNet: ipNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("macvlan network on %s: add %s to %s: %w", m.parent, want, nw.HostIf, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.get().LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("macvlan network on %s: set %s up: %w", m.parent, nw.HostIf, err)
		}
	}
	return link, nil
}

// deleteRoute removes the host's /32 route to a container; a route or a
// link already gone is success.
func (m *Macvlan) deleteRoute(host netlink.Link, a netip.Addr) error {
	if host == nil {
		return nil
	}
	err := m.nl.get().RouteDel(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(a, 32)), Scope: netlink.SCOPE_LINK})
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("macvlan network on %s: delete route to %s: %w", m.parent, a, err)
	}
	return nil
}

// hostLink returns the host-side link the record names if it is the one
// the record describes: a macvlan on the parent, holding the record's
// address (or none yet). Anything else of that name (say, another
// namespace's link of the same name, when a test's state is removed from
// the host) is not this network's: nil, and left alone. A link of that
// name that is not a macvlan is an error.
func (m *Macvlan) hostLink(rec *macvlanRecord) (netlink.Link, error) {
	link, err := m.nl.get().LinkByName(rec.HostIf)
	if isLinkNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: look up %s: %w", m.parent, rec.HostIf, err)
	}
	if _, ok := link.(*netlink.Macvlan); !ok {
		return nil, fmt.Errorf("macvlan network on %s: link %s is a %s, not a macvlan: left alone: %w", m.parent, rec.HostIf, link.Type(), ErrInvalidConfig)
	}
	parent, err := m.nl.get().LinkByIndex(link.Attrs().ParentIndex)
	if err != nil || parent.Attrs().Name != m.parent {
		m.log.Debug("host-side link is on another parent, left alone", "parent", m.parent, "link", rec.HostIf)
		return nil, nil
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.nl.get().AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: list addresses of %s: %w", m.parent, rec.HostIf, err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); !ok || p != netip.PrefixFrom(rec.HostAddress, 32) {
			m.log.Debug("host-side link holds another address, left alone", "parent", m.parent, "link", rec.HostIf, "address", a.IPNet)
			return nil, nil
		}
	}
	return link, nil
}

// teardown removes what the record names: the host-side link (with it,
// its address and routes), its address's allocation, the hint and the
// record itself. What is gone already is success. Call it under the lock.
func (m *Macvlan) teardown(rec *macvlanRecord) error {
	link, err := m.hostLink(rec)
	if err != nil {
		return err
	}
	if link != nil {
		if err := m.nl.get().LinkDel(link); err != nil && !isLinkNotFound(err) {
			return fmt.Errorf("macvlan network on %s: delete %s: %w", m.parent, rec.HostIf, err)
		}
		m.log.Debug("deleted host-side macvlan", "parent", m.parent, "link", rec.HostIf)
	}
	if rec.HostAddress.IsValid() {
		if err := m.freeAddr(rec.HostAddress, hostOwner); err != nil {
			return err
		}
	}
	for _, f := range []string{hintFile, macvlanRecordFile} {
		if err := os.Remove(filepath.Join(m.dir, f)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("macvlan network on %s: %w", m.parent, err)
		}
	}
	return nil
}

// Release frees the endpoints' addresses and deletes the host's routes to
// them. An endpoint with only a ContainerID frees whatever address that
// container holds. It is idempotent: an address or route already gone is
// success, and an address now owned by another container is left alone.
// With the network's last container, the host-side link goes, with its
// address, and the record. It goes on past a failure and returns all of
// them joined.
func (m *Macvlan) Release(ctx context.Context, eps []Endpoint) error {
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := m.readRecord()
	if err != nil {
		return err
	}
	owners, err := m.readOwners()
	if err != nil {
		return err
	}
	var host netlink.Link
	if rec != nil {
		if host, err = m.hostLink(rec); err != nil {
			return err
		}
	}
	var errs []error
	free := func(a netip.Addr, id string) {
		if owners[a] != id {
			return // someone else's now, or freed already
		}
		if err := m.deleteRoute(host, a); err != nil {
			errs = append(errs, err)
			return
		}
		if err := m.freeAddr(a, id); err != nil {
			errs = append(errs, err)
			return
		}
		delete(owners, a)
	}
	for _, ep := range eps {
		switch {
		case ep.Driver != DriverMacvlan || ep.Parent != m.parent:
			errs = append(errs, fmt.Errorf("macvlan network on %s: container %q: endpoint of driver %q on %q is not this network's: %w", m.parent, ep.ContainerID, ep.Driver, ep.Parent, ErrInvalidConfig))
		case ep.ContainerID == "" || ep.ContainerID == hostOwner:
			errs = append(errs, fmt.Errorf("macvlan network on %s: endpoint %+v names no container: %w", m.parent, ep, ErrInvalidConfig))
		case ep.Address.IsValid():
			free(ep.Address.Addr(), ep.ContainerID)
		default:
			// Known only by its container (a pirun that died between
			// reserving the address and recording it): find it.
			for a, id := range owners {
				if id == ep.ContainerID {
					free(a, id)
				}
			}
		}
	}
	if rec != nil && containerCount(owners) == 0 {
		errs = append(errs, m.teardown(rec))
	}
	return errors.Join(errs...)
}

// Attach connects the network namespace at nsPath (e.g.
// /proc/PID/task/TID/ns/net) to the LAN: a bridge-mode macvlan link on the
// parent, created directly inside the namespace as eth0, with ep.Address,
// no IPv6 address and a default route via ep.Gateway; lo is brought up
// too. It works from any thread, whatever its namespace. On failure it
// deletes the link.
func (m *Macvlan) Attach(ctx context.Context, ep Endpoint, nsPath string) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: attach: %w", m.parent, ep.ContainerID, err)
	}
	if ep.Driver != DriverMacvlan || ep.Parent != m.parent || !ep.Address.Addr().Is4() || !ep.Gateway.Is4() {
		return fmt.Errorf("macvlan network on %s: container %q: endpoint %+v is not one of this network's: %w", m.parent, ep.ContainerID, ep, ErrInvalidConfig)
	}
	parent, err := m.nl.get().LinkByName(m.parent)
	if err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: look up the parent: %w", m.parent, ep.ContainerID, err)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: open namespace %s: %w", m.parent, ep.ContainerID, nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: netlink in %s: %w", m.parent, ep.ContainerID, nsPath, err)
	}
	defer h.Close()

	// The parent is looked up in the namespace of the request (the
	// host's); the link is registered in the container's.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = containerIf
	attrs.ParentIndex = parent.Attrs().Index
	attrs.Namespace = netlink.NsFd(int(ns))
	attrs.HardwareAddr = macvlanMAC(ep.Address.Addr())
	if err := m.nl.get().LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: create %s in %s: %w", m.parent, ep.ContainerID, containerIf, nsPath, err)
	}
	eth0, err := h.LinkByName(containerIf)
	if err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: look up %s: %w", m.parent, ep.ContainerID, containerIf, err)
	}
	defer func() {
		if err != nil {
			if derr := h.LinkDel(eth0); derr != nil && !isLinkNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("delete %s: %w", containerIf, derr))
			}
		}
	}()
	if err := loopbackUp(h); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: %w", m.parent, ep.ContainerID, err)
	}
	// IPv4 only: no link-local address, so no duplicate address
	// detection, router solicitations or multicast reports on the LAN.
	if err := h.LinkSetIP6AddrGenMode(eth0, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: no IPv6 address on %s: %w", m.parent, ep.ContainerID, containerIf, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(ep.Address)}); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: add %s to %s: %w", m.parent, ep.ContainerID, ep.Address, containerIf, err)
	}
	if err := m.linkUp(ctx, h, eth0); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: set %s up: %w", m.parent, ep.ContainerID, containerIf, err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: ep.Gateway.AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("macvlan network on %s: container %q: add default route via %s: %w", m.parent, ep.ContainerID, ep.Gateway, err)
	}
	return nil
}

// upWait bounds how long Attach waits for a restarted container's previous
// link to go: the kernel refuses two macvlans of one MAC up on a parent
// (EADDRINUSE), and tears down a dead container's namespace, with its
// eth0, asynchronously. Past it the start fails; a supervisor retries.
const upWait = 2 * time.Second

// linkUp sets eth0 up, waiting (at most upWait) while its MAC is still
// taken by the container's previous link.
func (m *Macvlan) linkUp(ctx context.Context, h *netlink.Handle, link netlink.Link) error {
	deadline := time.Now().Add(upWait)
	for {
		err := h.LinkSetUp(link)
		if !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
