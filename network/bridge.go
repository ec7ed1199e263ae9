package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrBridgeFull is returned when a bridge has no free port: the kernel
// refused one more (ports pirun did not make take room too).
var ErrBridgeFull = errors.New("bridge has no free port")

// MaxBridgePorts is how many ports one Linux bridge holds: it has 1,024
// port numbers (BR_MAX_PORTS) and number 0 is never used. Each slice of
// the subnet (a /22: 1,021 containers) has a bridge of its own, so pirun's
// bridges stay below it.
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

// WithBridgeName sets the network's name: the name of its first bridge, of
// Endpoint.Network and of its state directory. The bridges of the other
// slices of the subnet are named NAME-1, NAME-2, …, so the name must leave
// room for the suffix when the subnet is larger than a /22. Default: "pirun0".
func WithBridgeName(name string) Option { return func(o *options) { o.bridgeName = name } }

// WithSubnet sets the network's IPv4 subnet. It is cut into slices of at
// most a /22, one bridge each; a slice's gateway is its first host address,
// on its bridge, and its containers get the following ones. It must be a
// network address (host bits zero) of at most /30. Default: 10.123.0.0/16
// (64 bridges of 1,021 containers).
func WithSubnet(p netip.Prefix) Option { return func(o *options) { o.subnet = p } }

// WithLogger sets where the driver logs (debug level: what it created,
// raised or removed). Default: a logger that discards everything.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Bridge is the bridge driver: Linux bridges in the network namespace that
// called NewBridge ("the host"), one per slice of the subnet in use,
// addresses allocated under stateDir. Its methods may be called from any
// goroutine and any OS thread, whatever network namespace that thread is
// in. Several Bridges, in one process or in several, may share a state
// directory.
type Bridge struct {
	name      string
	subnet    netip.Prefix
	r         addrRange
	log       *slog.Logger
	dir       string // stateDir/<name>
	sysctlDir string

	hostNS netns.NsHandle
	nl     handle // *netlink.Handle bound to hostNS

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
		r:         newAddrRange(p),
		log:       o.logger,
		dir:       filepath.Join(stateDir, o.bridgeName),
		sysctlDir: o.sysctlDir,
	}
	if last := b.bridgeName(b.r.slices - 1); validIfName(last) != nil {
		return nil, fmt.Errorf("network %s: subnet %s needs %d bridges, the last named %q, longer than %d characters: shorten the name or the subnet: %w",
			b.name, p, b.r.slices, last, unix.IFNAMSIZ-1, ErrInvalidConfig)
	}
	if b.r.perSlice() > MaxBridgePorts {
		return nil, fmt.Errorf("network %s: %d containers per bridge, more than the %d ports of a bridge: %w", b.name, b.r.perSlice(), MaxBridgePorts, ErrInvalidConfig)
	}
	if err := os.MkdirAll(filepath.Join(b.dir, ipsDir), 0o700); err != nil {
		return nil, fmt.Errorf("network %s: state directory: %w", b.name, err)
	}
	if b.hostNS, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("network %s: host network namespace: %w", b.name, err)
	}
	h, err := netlink.NewHandleAt(b.hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		b.hostNS.Close()
		return nil, fmt.Errorf("network %s: netlink handle: %w", b.name, err)
	}
	b.nl = newHandle(h)
	return b, nil
}

// Close releases the netlink handle and the namespace reference. It leaves
// the network itself as it is.
func (b *Bridge) Close() error {
	b.nl.get().Close()
	return b.hostNS.Close()
}

// Name is the network's name, which is also its first bridge's, e.g. "pirun0".
func (b *Bridge) Name() string { return b.name }

// Subnet is the network's subnet, e.g. 10.123.0.0/16.
func (b *Bridge) Subnet() netip.Prefix { return b.subnet }

// Capacity is how many containers the subnet holds: 1,021 per bridge.
func (b *Bridge) Capacity() int { return b.r.size() }

// bridgeName is the name of slice k's bridge: the network's name for the
// first, NAME-k for the others.
func (b *Bridge) bridgeName(k int) string {
	if k == 0 {
		return b.name
	}
	return b.name + "-" + strconv.Itoa(k)
}

// sliceOfBridge is the inverse of bridgeName.
func (b *Bridge) sliceOfBridge(name string) (int, bool) {
	if name == b.name {
		return 0, true
	}
	num, ok := strings.CutPrefix(name, b.name+"-")
	if !ok || num == "" || num[0] == '0' {
		return 0, false
	}
	k, err := strconv.Atoi(num)
	if err != nil || k < 1 || k >= b.r.slices {
		return 0, false
	}
	return k, true
}

// Allocate reserves one address per container id, in one hold of the state
// directory's lock, and makes sure the bridges of the slices they fall in,
// their gateway addresses, pirun's iptables rules and the host's neighbour
// table size and receive backlog are in place. Addresses are taken round-robin, so a slice
// fills before the next one gets its bridge. It reserves nothing when the
// subnet has no room for all ids (ErrSubnetFull) or overlaps a route of the
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
	if err := b.check(used, n); err != nil {
		return nil, err
	}
	addrs, err := b.reserve(used, ids)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.unreserve(addrs)
		}
	}()

	// The slices the new addresses fall in.
	var touched []int
	for _, a := range addrs {
		if k, _ := b.r.sliceOf(a); !slices.Contains(touched, k) {
			touched = append(touched, k)
		}
	}
	var created []int
	defer func() {
		if err != nil {
			// Undo the setup nobody else uses: the bridges made here and
			// their rules; when the network was empty, the rules of all
			// the bridges it touched and what they share. A bridge that
			// was there is left as it is (an old one may serve containers
			// in other slices).
			unruled := created
			if len(used) == 0 {
				unruled = touched
			}
			err = errors.Join(err, b.teardown(created, unruled, len(used) == 0))
		}
	}()
	for _, k := range touched {
		made, err := b.ensureBridge(k)
		if err != nil {
			return nil, err
		}
		if made {
			created = append(created, k)
		}
	}
	if err := b.ensureIptables(b.bridgeNames(touched)); err != nil {
		return nil, err
	}
	perBridge := b.bySlice(used)
	for _, a := range addrs {
		k, _ := b.r.sliceOf(a)
		perBridge[k]++
	}
	if err := b.raiseSysctls(len(used)+n, slices.Max(slices.Collect(maps.Values(perBridge)))); err != nil {
		return nil, err
	}

	eps := make([]Endpoint, n)
	for i, id := range ids {
		k, _ := b.r.sliceOf(addrs[i])
		eps[i] = Endpoint{
			Network:     b.bridgeName(k),
			ContainerID: id,
			Address:     netip.PrefixFrom(addrs[i], b.r.slicePrefix(k).Bits()),
			Gateway:     b.r.gateway(k),
			HostIf:      HostIfName(id),
		}
	}
	b.log.Debug("allocated", "network", b.name, "count", n, "in_use", len(used)+n, "bridges", len(touched))
	return eps, nil
}

// Check reports, without reserving anything, whether n more containers
// fit on the network now: the errors Allocate would return before it
// changes anything (ErrSubnetFull, ErrSubnetOverlap, no iptables). Callers
// check before they start anything; Allocate checks again under its lock.
func (b *Bridge) Check(ctx context.Context, n int) error {
	unlock, err := b.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	used, err := b.readAllocations()
	if err != nil {
		return err
	}
	return b.check(used, n)
}

// check is Check under the lock, with the allocations read.
func (b *Bridge) check(used map[netip.Addr]struct{}, n int) error {
	if free := b.r.size() - len(used); n > free {
		return fmt.Errorf("network %s: %d more containers do not fit in %s: it holds %d (%d bridges of %d), %d in use, %d free: %w",
			b.name, n, b.subnet, b.r.size(), b.r.slices, b.r.perSlice(), len(used), max(free, 0), ErrSubnetFull)
	}
	if err := b.checkOverlap(); err != nil {
		return err
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return fmt.Errorf("network %s: the iptables binary is not installed (pirun needs it for its forwarding rules): %w", b.name, err)
	}
	return nil
}

// owns reports whether ep is on one of the network's bridges (or names
// none: known only by its container).
func (b *Bridge) owns(ep Endpoint) bool {
	_, ok := b.sliceOfBridge(ep.Network)
	return ok || ep.Network == ""
}

// bySlice counts the allocations in each slice.
func (b *Bridge) bySlice(used map[netip.Addr]struct{}) map[int]int {
	m := map[int]int{}
	for a := range used {
		if k, ok := b.r.sliceOf(a); ok {
			m[k]++
		}
	}
	return m
}

func (b *Bridge) bridgeNames(ks []int) []string {
	names := make([]string, len(ks))
	for i, k := range ks {
		names[i] = b.bridgeName(k)
	}
	return names
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

// checkOverlap refuses a subnet that overlaps a route of the host other
// than those of the network's own bridges.
func (b *Bridge) checkOverlap() error {
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return b.nl.get().RouteList(nil, netlink.FAMILY_V4)
	})
	if err != nil {
		return fmt.Errorf("network %s: list routes: %w", b.name, err)
	}
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		dst, ok := prefixOf(rt.Dst)
		if !ok || dst.Bits() == 0 || !dst.Overlaps(b.subnet) {
			continue // a default route overlaps everything
		}
		dev := ""
		if l, err := b.nl.get().LinkByIndex(rt.LinkIndex); err == nil {
			dev = l.Attrs().Name
			if _, ours := b.sliceOfBridge(dev); ours {
				continue
			}
			dev = " dev " + dev
		}
		return fmt.Errorf("network %s: subnet %s overlaps route %s%s: %w", b.name, b.subnet, dst, dev, ErrSubnetOverlap)
	}
	return nil
}

// ensureBridge makes sure slice k's bridge exists, is a bridge, holds the
// slice's gateway address and is up. created reports whether it made the
// link; on error it removes what it made.
func (b *Bridge) ensureBridge(k int) (created bool, err error) {
	name := b.bridgeName(k)
	link, err := b.nl.get().LinkByName(name)
	if isLinkNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		// A MAC set at creation is kept: the bridge does not take its
		// lowest port's address, which would change as ports come and go.
		attrs.HardwareAddr = randomMAC()
		err = b.nl.get().LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		switch {
		case err == nil:
			created = true
			b.log.Debug("created bridge", "network", b.name, "bridge", name)
		case errors.Is(err, unix.EEXIST):
		default:
			return false, fmt.Errorf("network %s: create bridge %s: %w", b.name, name, err)
		}
		link, err = b.nl.get().LinkByName(name)
	}
	if err != nil {
		return false, fmt.Errorf("network %s: look up bridge %s: %w", b.name, name, err)
	}
	defer func() {
		if err != nil && created {
			if derr := b.deleteBridge(name); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if _, ok := link.(*netlink.Bridge); !ok {
		return created, fmt.Errorf("network %s: link %s is a %s, not a bridge: %w", b.name, name, link.Type(), ErrInvalidConfig)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return b.nl.get().AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return created, fmt.Errorf("network %s: list addresses of bridge %s: %w", b.name, name, err)
	}
	want := netip.PrefixFrom(b.r.gateway(k), b.r.slicePrefix(k).Bits())
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
		return created, fmt.Errorf("network %s: bridge %s has address %s, want %s (made with another subnet, or by a pirun before bridges had slices: remove its containers first): %w",
			b.name, name, p, want, ErrInvalidConfig)
	}
	if !found {
		gw := &netlink.Addr{IPNet: ipNet(want)}
		if err := b.nl.get().AddrAdd(link, gw); err != nil && !errors.Is(err, unix.EEXIST) {
			return created, fmt.Errorf("network %s: add gateway %s to bridge %s: %w", b.name, want, name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := b.nl.get().LinkSetUp(link); err != nil {
			return created, fmt.Errorf("network %s: set bridge %s up: %w", b.name, name, err)
		}
	}
	return created, nil
}

// deleteBridge removes a bridge of the network; a missing bridge is success.
func (b *Bridge) deleteBridge(name string) error {
	link, err := b.nl.get().LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: look up bridge %s: %w", b.name, name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("network %s: link %s is a %s, not a bridge: left alone: %w", b.name, name, link.Type(), ErrInvalidConfig)
	}
	if err := b.nl.get().LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("network %s: delete bridge %s: %w", b.name, name, err)
	}
	b.log.Debug("deleted bridge", "network", b.name, "bridge", name)
	return nil
}

// Release frees the endpoints' addresses and deletes their host veths. An
// endpoint with only a ContainerID frees whatever address that container
// holds (found by a scan of the allocations). It is idempotent: a veth or
// an address already gone is success, and an address now owned by another
// container is left alone. A bridge whose slice has no address left is
// removed with its iptables rules; with the last address of the network,
// pirun's chain goes too and the sysctls it raised are restored. It goes on
// past a failure and returns all of them joined.
func (b *Bridge) Release(ctx context.Context, eps []Endpoint) error {
	var errs []error
	// Deleting links is slow (an RCU grace period each): do it unlocked.
	for _, ep := range eps {
		if !b.owns(ep) {
			errs = append(errs, fmt.Errorf("network %s: container %q: endpoint is on bridge %q, not one of this network's: %w", b.name, ep.ContainerID, ep.Network, ErrInvalidConfig))
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
	touched := map[int]bool{}
	lost := map[string]bool{}
	free := func(ep Endpoint) {
		errs = append(errs, b.free(ep))
		if k, ok := b.r.sliceOf(ep.Address.Addr()); ok {
			touched[k] = true
		}
	}
	for _, ep := range eps {
		if !b.owns(ep) {
			continue
		}
		if ep.Address.IsValid() {
			free(ep)
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
			free(ep)
		}
	}
	used, err := b.readAllocations()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	left := b.bySlice(used)
	if len(used) == 0 {
		touched[0] = true // the first bridge goes with the network, whoever made it
	}
	var empty []int
	for k := range touched {
		if left[k] == 0 {
			empty = append(empty, k)
		}
	}
	slices.Sort(empty)
	if len(empty) > 0 {
		errs = append(errs, b.teardown(empty, empty, len(used) == 0))
	}
	return errors.Join(errs...)
}

// teardown deletes the bridges of slices del and the iptables rules of
// slices unruled; with all, also what the network's bridges share: the
// iptables chain (when no other network has rules in it), the sysctls
// pirun raised and the allocation hint. Call it under the lock.
func (b *Bridge) teardown(del, unruled []int, all bool) error {
	var errs []error
	for _, k := range del {
		errs = append(errs, b.deleteBridge(b.bridgeName(k)))
	}
	if len(unruled) > 0 || all {
		errs = append(errs, b.removeIptables(b.bridgeNames(unruled)))
	}
	if all {
		errs = append(errs, b.restoreSysctls())
		if err := os.Remove(filepath.Join(b.dir, hintFile)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("network %s: %w", b.name, err))
		}
	}
	return errors.Join(errs...)
}

func (b *Bridge) deleteVeth(ep Endpoint) error {
	link, err := b.nl.get().LinkByName(ep.HostIf)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: container %q: look up %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("network %s: container %q: link %s is a %s, not a veth: left alone: %w", b.name, ep.ContainerID, ep.HostIf, link.Type(), ErrInvalidConfig)
	}
	if err := b.nl.get().LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("network %s: container %q: delete %s: %w", b.name, ep.ContainerID, ep.HostIf, err)
	}
	return nil
}
