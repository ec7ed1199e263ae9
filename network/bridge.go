package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrBridgeFull is returned when an allocation would give the bridge more
// ports than MaxBridgePorts.
var ErrBridgeFull = errors.New("bridge has no free port")

// MaxBridgePorts is how many containers one pirun bridge holds. A Linux
// bridge has 1,024 port numbers (BR_MAX_PORTS); pirun keeps one in reserve.
const MaxBridgePorts = 1023

// Defaults of the bridge driver's options.
const (
	DefaultBridgeName = "pirun0"
	defaultSubnet     = "10.123.0.0/16"
)

// DefaultSubnet is the bridge's subnet unless WithSubnet says otherwise. It
// is not podman's 10.88.0.0/16, so both can run on one host.
var DefaultSubnet = netip.MustParsePrefix(defaultSubnet)

type options struct {
	bridgeName string
	subnet     netip.Prefix
	logger     *slog.Logger
	sysctlDir  string // tests point it at a fake tree
}

// Option configures NewBridge.
type Option func(*options)

// WithBridgeName sets the name of the Linux bridge, which is also the
// network's name in Endpoint.Network and the state directory's name.
// Default: "pirun0".
func WithBridgeName(name string) Option { return func(o *options) { o.bridgeName = name } }

// WithSubnet sets the bridge's IPv4 subnet: the gateway is its first host
// address, containers get the following ones. It must be a network address
// (host bits zero) of at most /30. Default: 10.123.0.0/16.
func WithSubnet(p netip.Prefix) Option { return func(o *options) { o.subnet = p } }

// WithLogger sets where the driver logs (debug level: what it created,
// raised or removed). Default: a logger that discards everything.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Bridge is the bridge driver: one Linux bridge in the network namespace
// that called NewBridge ("the host"), addresses allocated under stateDir.
// Its methods may be called from any goroutine and any OS thread, whatever
// network namespace that thread is in. Several Bridges, in one process or in
// several, may share a state directory.
type Bridge struct {
	name      string
	subnet    netip.Prefix
	gateway   netip.Addr
	log       *slog.Logger
	dir       string // stateDir/<name>
	sysctlDir string

	hostNS netns.NsHandle
	nl     *netlink.Handle // bound to hostNS

	iptMu sync.Mutex
	ipt   *iptables.IPTables // created on first use, in hostNS
}

// NewBridge returns the bridge driver whose state lives in
// stateDir/<bridge name>. The calling thread's network namespace becomes
// the bridge's host namespace. Nothing is created on the host until
// Allocate. Close releases the handles NewBridge opened.
func NewBridge(stateDir string, opts ...Option) (_ *Bridge, err error) {
	o := options{
		bridgeName: DefaultBridgeName,
		subnet:     DefaultSubnet,
		logger:     slog.New(slog.DiscardHandler),
		sysctlDir:  "/proc/sys",
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := validIfName(o.bridgeName); err != nil {
		return nil, fmt.Errorf("network %q: bridge name: %w", o.bridgeName, err)
	}
	p := o.subnet
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 || p.Masked() != p {
		return nil, fmt.Errorf("network %s: subnet %s: want an IPv4 network address of at most /30: %w", o.bridgeName, p, ErrInvalidConfig)
	}
	if stateDir == "" {
		return nil, fmt.Errorf("network %s: empty state directory: %w", o.bridgeName, ErrInvalidConfig)
	}
	b := &Bridge{
		name:      o.bridgeName,
		subnet:    p,
		gateway:   p.Addr().Next(),
		log:       o.logger,
		dir:       filepath.Join(stateDir, o.bridgeName),
		sysctlDir: o.sysctlDir,
	}
	if err := os.MkdirAll(filepath.Join(b.dir, ipsDir), 0o700); err != nil {
		return nil, fmt.Errorf("network %s: state directory: %w", b.name, err)
	}
	if b.hostNS, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("network %s: host network namespace: %w", b.name, err)
	}
	if b.nl, err = netlink.NewHandleAt(b.hostNS, unix.NETLINK_ROUTE); err != nil {
		b.hostNS.Close()
		return nil, fmt.Errorf("network %s: netlink handle: %w", b.name, err)
	}
	return b, nil
}

// Close releases the netlink handle and the namespace reference. It leaves
// the network itself as it is.
func (b *Bridge) Close() error {
	b.nl.Close()
	return b.hostNS.Close()
}

// Name is the bridge's name, e.g. "pirun0".
func (b *Bridge) Name() string { return b.name }

// Subnet is the bridge's subnet, e.g. 10.123.0.0/16.
func (b *Bridge) Subnet() netip.Prefix { return b.subnet }

// Allocate reserves one address per container id, in one hold of the state
// directory's lock, and makes sure the bridge, its gateway address, pirun's
// iptables rules and the host's neighbour table size are in place. It
// reserves nothing when the subnet or the bridge has no room for all ids
// (ErrSubnetFull, ErrBridgeFull), or when the subnet overlaps a route of the
// host (ErrSubnetOverlap). On failure it undoes what it did.
func (b *Bridge) Allocate(ctx context.Context, ids []string) (_ []Endpoint, err error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if err := b.checkIDs(ids); err != nil {
		return nil, err
	}
	unlock, err := b.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	used, err := b.readAllocations()
	if err != nil {
		return nil, err
	}
	n := len(ids)
	if len(used)+n > MaxBridgePorts {
		return nil, fmt.Errorf("network %s: allocate %d addresses with %d in use: more than the %d ports a bridge holds: %w",
			b.name, n, len(used), MaxBridgePorts, ErrBridgeFull)
	}
	r := newAddrRange(b.subnet)
	if free := r.size() - len(used); n > free {
		return nil, fmt.Errorf("network %s: allocate %d addresses in %s: %d of %d free: %w",
			b.name, n, b.subnet, free, r.size(), ErrSubnetFull)
	}
	if err := b.checkOverlap(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("network %s: the iptables binary is not installed (pirun needs it for its forwarding rules): %w", b.name, err)
	}

	addrs, err := b.reserve(r, used, ids)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.unreserve(addrs)
		}
	}()

	created, err := b.ensureBridge()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && len(used) == 0 {
			// Nothing else lives on this network: undo the shared setup too.
			err = errors.Join(err, b.teardownShared(created))
		}
	}()
	if err := b.ensureIptables(); err != nil {
		return nil, err
	}
	if err := b.raiseNeigh(len(used) + n); err != nil {
		return nil, err
	}

	eps := make([]Endpoint, n)
	for i, id := range ids {
		eps[i] = Endpoint{
			Network:     b.name,
			ContainerID: id,
			Address:     netip.PrefixFrom(addrs[i], b.subnet.Bits()),
			Gateway:     b.gateway,
			HostIf:      HostIfName(id),
		}
	}
	b.log.Debug("allocated", "network", b.name, "count", n, "in_use", len(used)+n)
	return eps, nil
}

func (b *Bridge) checkIDs(ids []string) error {
	seen := make(map[string]string, len(ids))
	for _, id := range ids {
		if id == "" {
			return fmt.Errorf("network %s: empty container id: %w", b.name, ErrInvalidConfig)
		}
		hif := HostIfName(id)
		if err := validIfName(hif); err != nil {
			return fmt.Errorf("network %s: container %q: host interface %q: %w", b.name, id, hif, err)
		}
		if other, ok := seen[hif]; ok {
			return fmt.Errorf("network %s: containers %q and %q share the host interface name %s: %w", b.name, other, id, hif, ErrInvalidConfig)
		}
		seen[hif] = id
	}
	return nil
}

// checkOverlap refuses a subnet that overlaps a route of the host other than
// the bridge's own.
func (b *Bridge) checkOverlap() error {
	brIndex := 0
	if l, err := b.nl.LinkByName(b.name); err == nil {
		brIndex = l.Attrs().Index
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return b.nl.RouteList(nil, netlink.FAMILY_V4)
	})
	if err != nil {
		return fmt.Errorf("network %s: list routes: %w", b.name, err)
	}
	for _, rt := range routes {
		if rt.Dst == nil || (brIndex != 0 && rt.LinkIndex == brIndex) {
			continue
		}
		dst, ok := prefixOf(rt.Dst)
		if !ok || dst.Bits() == 0 {
			continue // a default route overlaps everything
		}
		if dst.Overlaps(b.subnet) {
			dev := ""
			if l, err := b.nl.LinkByIndex(rt.LinkIndex); err == nil {
				dev = " dev " + l.Attrs().Name
			}
			return fmt.Errorf("network %s: subnet %s overlaps route %s%s: %w", b.name, b.subnet, dst, dev, ErrSubnetOverlap)
		}
	}
	return nil
}

// ensureBridge makes sure the bridge exists, is a bridge, holds the gateway
// address and is up. created reports whether it made the link; on error it
// removes what it made.
func (b *Bridge) ensureBridge() (created bool, err error) {
	link, err := b.nl.LinkByName(b.name)
	if isLinkNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = b.name
		// A MAC set at creation is kept: the bridge does not take its
		// lowest port's address, which would change as ports come and go.
		attrs.HardwareAddr = randomMAC()
		err = b.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		switch {
		case err == nil:
			created = true
			b.log.Debug("created bridge", "network", b.name)
		case errors.Is(err, unix.EEXIST):
		default:
			return false, fmt.Errorf("network %s: create bridge: %w", b.name, err)
		}
		link, err = b.nl.LinkByName(b.name)
	}
	if err != nil {
		return false, fmt.Errorf("network %s: look up bridge: %w", b.name, err)
	}
	defer func() {
		if err != nil && created {
			if derr := b.deleteBridge(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if _, ok := link.(*netlink.Bridge); !ok {
		return created, fmt.Errorf("network %s: link %s is a %s, not a bridge: %w", b.name, b.name, link.Type(), ErrInvalidConfig)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return b.nl.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return created, fmt.Errorf("network %s: list bridge addresses: %w", b.name, err)
	}
	want := netip.PrefixFrom(b.gateway, b.subnet.Bits())
	found := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		if p == want {
			found = true
			continue
		}
		return created, fmt.Errorf("network %s: bridge has address %s, want %s (was it made with another subnet?): %w", b.name, p, want, ErrInvalidConfig)
	}
	if !found {
		gw := &netlink.Addr{IPNet: &net.IPNet{IP: b.gateway.AsSlice(), Mask: net.CIDRMask(b.subnet.Bits(), 32)}}
		if err := b.nl.AddrAdd(link, gw); err != nil && !errors.Is(err, unix.EEXIST) {
			return created, fmt.Errorf("network %s: add gateway %s: %w", b.name, want, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := b.nl.LinkSetUp(link); err != nil {
			return created, fmt.Errorf("network %s: set bridge up: %w", b.name, err)
		}
	}
	return created, nil
}

// deleteBridge removes the bridge; a missing bridge is success.
func (b *Bridge) deleteBridge() error {
	link, err := b.nl.LinkByName(b.name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: look up bridge: %w", b.name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("network %s: link %s is a %s, not a bridge: left alone: %w", b.name, b.name, link.Type(), ErrInvalidConfig)
	}
	if err := b.nl.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("network %s: delete bridge: %w", b.name, err)
	}
	b.log.Debug("deleted bridge", "network", b.name)
	return nil
}

// Release frees the endpoints' addresses and deletes their host veths. An
// endpoint with only a ContainerID frees whatever address that container
// holds (found by a scan of the allocations). It is idempotent: a veth or an address already gone is success, and an address
// now owned by another container is left alone. When no address remains it
// removes the bridge, pirun's iptables rules and restores the sysctls it
// raised. It goes on past a failure and returns all of them joined.
func (b *Bridge) Release(ctx context.Context, eps []Endpoint) error {
	var errs []error
	// Deleting links is slow (an RCU grace period each): do it unlocked.
	for _, ep := range eps {
		if ep.Network != "" && ep.Network != b.name {
			errs = append(errs, fmt.Errorf("network %s: container %q: endpoint belongs to network %q: %w", b.name, ep.ContainerID, ep.Network, ErrInvalidConfig))
			continue
		}
		if ep.HostIf == "" && ep.ContainerID != "" {
			ep.HostIf = HostIfName(ep.ContainerID)
		}
		if ep.HostIf != "" {
			errs = append(errs, b.deleteVeth(ep))
		}
	}
	unlock, err := b.lock(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer unlock()
	lost := map[string]bool{}
	for _, ep := range eps {
		if ep.Network != "" && ep.Network != b.name {
			continue
		}
		if ep.Address.IsValid() {
			errs = append(errs, b.free(ep))
		} else if ep.ContainerID != "" {
			lost[ep.ContainerID] = true
		}
	}
	if len(lost) > 0 {
		// Endpoints known only by container id (a pirun that died between
		// reserving the addresses and recording them): find them.
		found, err := b.ownedBy(lost)
		errs = append(errs, err)
		for _, ep := range found {
			errs = append(errs, b.free(ep))
		}
	}
	used, err := b.readAllocations()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if len(used) == 0 {
		errs = append(errs, b.teardownShared(true))
	}
	return errors.Join(errs...)
}

// teardownShared removes what the network's containers share: the bridge
// (if removeBridge), the iptables rules and the raised sysctls.
func (b *Bridge) teardownShared(removeBridge bool) error {
	var errs []error
	if removeBridge {
		errs = append(errs, b.deleteBridge())
	}
	errs = append(errs, b.removeIptables(), b.restoreNeigh())
	if err := os.Remove(filepath.Join(b.dir, hintFile)); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("network %s: %w", b.name, err))
	}
	return errors.Join(errs...)
}

func (b *Bridge) deleteVeth(ep Endpoint) error {
	link, err := b.nl.LinkByName(ep.HostIf)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: container %q: look up %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("network %s: container %q: link %s is a %s, not a veth: left alone: %w", b.name, ep.ContainerID, ep.HostIf, link.Type(), ErrInvalidConfig)
	}
	if err := b.nl.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("network %s: container %q: delete %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	return nil
}
