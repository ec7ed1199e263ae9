package network

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/fsutil"
)

// Port publishing: see "Published ports" in doc.go.

// State of the published ports, under stateDir/ports/ (shared by every
// bridge of the state directory, since a host port is the host's):
//
//	lock                      flock held for every change of the ports
//	<proto>-<ip>-<port>.json  one published host port: its DNAT chain and targets
//	host.json                 the sysctls and rules pirun added for them
const (
	portsDirName   = "ports"
	hostRecordFile = "host.json"
)

// dispatchChain is pirun's chain in the nat table that sends each
// published host port to the port's own DNAT chain. It is jumped to for
// packets to an address of the host: from PREROUTING (except to
// 127.0.0.0/8, which only the host itself may use) and from OUTPUT.
var dispatchChain = hookedChain{
	table: "nat", name: "PIRUN-PORTS",
	jumps: []jump{
		{from: "PREROUTING", spec: []string{"!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "PIRUN-PORTS"}},
		{from: "OUTPUT", spec: []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "PIRUN-PORTS"}},
	},
}

// portRecord is one published host port: the chain of DNAT rules that
// spreads its connections over the targets. A chain is recorded before it
// is made, so that a crash leaves a record to remove it by.
type portRecord struct {
	Port PortMapping `json:"port"`
	// Chains are the port's chains that may exist: the current one last,
	// older ones only while a rewrite is under way (or was interrupted).
	Chains  []string   `json:"chains"`
	Targets []Endpoint `json:"targets"`
}

// chain is the port's current chain.
func (r *portRecord) chain() string { return r.Chains[len(r.Chains)-1] }

// check refuses a record that is not in its file or names chains or
// targets pirun never makes: Unpublish deletes what a record names.
func (r *portRecord) check(file string) error {
	if err := r.Port.Validate(); err != nil {
		return err
	}
	if portFile(r.Port) != file {
		return fmt.Errorf("it is the record of port %s", r.Port.HostAddr())
	}
	if len(r.Chains) == 0 {
		return errors.New("no chain")
	}
	prefix := fmt.Sprintf("PIRUN-%s%d-", strings.ToUpper(r.Port.Protocol), r.Port.HostPort)
	for _, c := range r.Chains {
		if rest, ok := strings.CutPrefix(c, prefix); !ok || len(rest) != 6 || strings.Trim(rest, "0123456789abcdef") != "" {
			return fmt.Errorf("chain %q is not one of the port's", c)
		}
	}
	for _, t := range r.Targets {
		if !t.Address.Addr().Is4() || validIfName(t.Network) != nil || validIfName(t.HostIf) != nil {
			return fmt.Errorf("target %+v", t)
		}
	}
	return nil
}

func (b *Bridge) portsDir() string { return filepath.Join(filepath.Dir(b.dir), portsDirName) }

func portFile(p PortMapping) string {
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	return fmt.Sprintf("%s-%s-%d.json", p.Protocol, ip, p.HostPort)
}

func (b *Bridge) portsLock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(b.portsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("published ports: state directory: %w", err)
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(b.portsDir(), lockFile))
	if err != nil {
		return nil, fmt.Errorf("published ports: lock: %w", err)
	}
	return unlock, nil
}

// readPortRecords reads every published port. Call it under the lock.
func (b *Bridge) readPortRecords() ([]*portRecord, error) {
	ents, err := os.ReadDir(b.portsDir())
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("published ports: %w", err)
	}
	var recs []*portRecord
	for _, e := range ents {
		n := e.Name()
		if n == hostRecordFile || !strings.HasSuffix(n, ".json") || strings.HasPrefix(n, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(b.portsDir(), n))
		if err != nil {
			return nil, fmt.Errorf("published ports: %w", err)
		}
		var r portRecord
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("published ports: %s is corrupt: %w", n, err)
		}
		if err := r.check(n); err != nil {
			return nil, fmt.Errorf("published ports: %s is corrupt: %w", n, err)
		}
		recs = append(recs, &r)
	}
	return recs, nil
}

func (b *Bridge) writePortRecord(r *portRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(b.portsDir(), portFile(r.Port)), data, 0o600); err != nil {
		return fmt.Errorf("port %s: record: %w", r.Port.HostAddr(), err)
	}
	return nil
}

func (b *Bridge) removePortFile(r *portRecord) error {
	err := os.Remove(filepath.Join(b.portsDir(), portFile(r.Port)))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("port %s: remove record: %w", r.Port.HostAddr(), err)
	}
	return nil
}

// newChainName names a port's DNAT chain: PIRUN-TCP8080-3f6d1c. The random
// part tells apart two generations of the same port's chain, and the
// chains of one port published on two host addresses.
func newChainName(p PortMapping) string {
	var r [3]byte
	rand.Read(r[:])
	return fmt.Sprintf("PIRUN-%s%d-%s", strings.ToUpper(p.Protocol), p.HostPort, hex.EncodeToString(r[:]))
}

// dispatchSpec is the rule of PIRUN-PORTS that sends p to chain.
func dispatchSpec(p PortMapping, chain string) []string {
	var s []string
	if p.HostIP.IsValid() {
		s = append(s, "-d", p.HostIP.String()+"/32")
	}
	return append(s, "-p", p.Protocol, "-m", p.Protocol, "--dport", strconv.Itoa(int(p.HostPort)), "-j", chain)
}

// dnatSpecs are the rules of a port's chain. Rule i of n matches every
// (n-i)th new connection that reaches it, the last one every connection:
// the connections are spread over the targets exactly in turn (iptables'
// statistic match, nftables' numgen). Only the first packet of a
// connection passes the nat table, so the counters count connections.
func dnatSpecs(p PortMapping, targets []Endpoint) [][]string {
	n := len(targets)
	specs := make([][]string, n)
	for i, t := range targets {
		s := []string{"-p", p.Protocol}
		if i < n-1 {
			s = append(s, "-m", "statistic", "--mode", "nth", "--every", strconv.Itoa(n-i), "--packet", "0")
		}
		to := netip.AddrPortFrom(t.Address.Addr(), p.ContainerPort).String()
		specs[i] = append(s, "-j", "DNAT", "--to-destination", to)
	}
	return specs
}

// CheckPorts reports whether the host ports are free to publish: not
// published by pirun (this state directory's records, or another's rules
// in PIRUN-PORTS) and not taken by a socket of the host (a bind test).
// Publish checks again, under the lock; call CheckPorts before starting
// anything, to refuse early.
func (b *Bridge) CheckPorts(ctx context.Context, ports []PortMapping) error {
	if err := CheckPortMappings(ports); err != nil {
		return err
	}
	if len(ports) == 0 {
		return nil
	}
	unlock, err := b.portsLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := b.readPortRecords()
	if err != nil {
		return err
	}
	return b.checkPortsFree(recs, ports)
}

// checkPortsFree is CheckPorts under the lock.
func (b *Bridge) checkPortsFree(recs []*portRecord, ports []PortMapping) error {
	ours := map[string]bool{}
	for _, p := range ports {
		for _, r := range recs {
			for _, c := range r.Chains {
				ours[c] = true
			}
			if p.overlaps(r.Port) {
				first := ""
				if len(r.Targets) > 0 {
					first = fmt.Sprintf(", the first %.12s", r.Targets[0].ContainerID)
				}
				return fmt.Errorf("port %s: %w: published by pirun as %s to %d containers%s", p.HostAddr(), ErrPortInUse, r.Port.HostAddr(), len(r.Targets), first)
			}
		}
	}
	return b.inHost(func() error {
		for _, p := range ports {
			if err := bindTest(p); err != nil {
				return err
			}
		}
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		ok, err := ipt.ChainExists(dispatchChain.table, dispatchChain.name)
		if err != nil || !ok {
			return err
		}
		rules, err := ipt.List(dispatchChain.table, dispatchChain.name)
		if err != nil {
			return fmt.Errorf("list chain %s: %w", dispatchChain.name, err)
		}
		for _, rule := range rules {
			q, chain, ok := parseDispatch(rule)
			if !ok || ours[chain] {
				continue
			}
			for _, p := range ports {
				if p.overlaps(q) {
					return fmt.Errorf("port %s: %w: published by another pirun state directory as %s (chain %s)", p.HostAddr(), ErrPortInUse, q.HostAddr(), chain)
				}
			}
		}
		return nil
	})
}

// bindTest binds a socket to the port, as a server would: it fails if a
// socket of the host listens on the port (TCP) or is bound to it (UDP).
// Call it in the host's network namespace.
func bindTest(p PortMapping) error {
	typ := unix.SOCK_STREAM
	if p.Protocol == ProtocolUDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("port %s: test socket: %w", p.HostAddr(), err)
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_STREAM {
		// Connections in TIME_WAIT do not make a port busy.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fmt.Errorf("port %s: test socket: %w", p.HostAddr(), err)
		}
	}
	sa := &unix.SockaddrInet4{Port: int(p.HostPort)}
	if p.HostIP.IsValid() {
		sa.Addr = p.HostIP.As4()
	}
	switch err := unix.Bind(fd, sa); {
	case err == nil:
		return nil
	case errors.Is(err, unix.EADDRINUSE):
		return fmt.Errorf("port %s: %w: a socket of the host is bound to it", p.HostAddr(), ErrPortInUse)
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("port %s: %s is not an address of this host: %w", p.HostAddr(), p.HostIP, ErrInvalidConfig)
	default:
		return fmt.Errorf("port %s: test bind: %w", p.HostAddr(), err)
	}
}

// parseDispatch reads a rule of PIRUN-PORTS as iptables -S prints it.
func parseDispatch(rule string) (p PortMapping, chain string, ok bool) {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "-d":
			pre, err := netip.ParsePrefix(f[i+1])
			if err != nil {
				return p, "", false
			}
			p.HostIP = pre.Addr()
		case "-p":
			p.Protocol = f[i+1]
		case "--dport":
			v, err := strconv.ParseUint(f[i+1], 10, 16)
			if err != nil {
				return p, "", false
			}
			p.HostPort = uint16(v)
		case "-j":
			chain = f[i+1]
		}
	}
	return p, chain, p.HostPort != 0 && p.Protocol != "" && chain != ""
}

// Publish publishes each port on the host and spreads the connections to
// it over the endpoints eps, in the kernel: one DNAT chain per host port,
// whose rules take the endpoints in turn (see dnatSpecs). It holds the
// ports' lock throughout and refuses, changing nothing, a host port that
// is in use (ErrPortInUse, see CheckPorts). The endpoints may belong to any
// bridge of the state directory. On failure it removes what it added.
//
// What the host needs for the ports is set up first, and the ports are
// switched on last: for a port reachable at 127.0.0.1, route_localnet on
// the endpoints' bridges and a MASQUERADE of 127.0.0.0/8 sources; for a
// port reachable from the containers (hairpin), forwarding on the bridges,
// hairpin mode on the endpoints' bridge ports and a MASQUERADE of the
// subnet's DNATed connections. See doc.go.
func (b *Bridge) Publish(ctx context.Context, ports []PortMapping, eps []Endpoint) (err error) {
	if len(ports) == 0 {
		return nil
	}
	if err := CheckPortMappings(ports); err != nil {
		return err
	}
	if len(eps) == 0 {
		return fmt.Errorf("publish %s: no containers: %w", ports[0].HostAddr(), ErrInvalidConfig)
	}
	for _, ep := range eps {
		if !ep.Address.Addr().Is4() || ep.Network == "" || ep.HostIf == "" || ep.ContainerID == "" {
			return fmt.Errorf("publish: container %q: incomplete endpoint %+v: %w", ep.ContainerID, ep, ErrInvalidConfig)
		}
	}
	unlock, err := b.portsLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := b.readPortRecords()
	if err != nil {
		return err
	}
	if err := b.checkPortsFree(recs, ports); err != nil {
		return err
	}

	var added []*portRecord
	defer func() {
		if err != nil {
			// Ctrl-C must not leak: the undo does not look at ctx.
			for _, r := range added {
				err = errors.Join(err, b.unpublishPort(r))
			}
			err = errors.Join(err, b.reconcileHost(recs))
		}
	}()
	for _, p := range ports {
		r := &portRecord{Port: p, Chains: []string{newChainName(p)}, Targets: eps}
		if err := b.writePortRecord(r); err != nil {
			return err
		}
		added = append(added, r)
		if err := b.swapChain(r, nil); err != nil {
			return err
		}
	}
	for _, p := range ports {
		if p.fromBridge() {
			if err := b.setHairpin(eps); err != nil {
				return err
			}
			break
		}
	}
	if err := b.reconcileHost(append(recs, added...)); err != nil {
		return err
	}
	for _, r := range added {
		if err := b.insertDispatch(r.Port, r.chain()); err != nil {
			return err
		}
		b.log.Debug("published port", "port", r.Port.HostAddr(), "container_port", r.Port.ContainerPort, "containers", len(r.Targets), "chain", r.chain())
	}
	return nil
}

// Unpublish takes the containers out of every port they are published on,
// before they stop: a port's chain is rebuilt without them under a new
// name and swapped in for the old one in one iptables-restore transaction,
// so no new connection goes to them; the port of the last of them is
// removed entirely, and with the last port whatever pirun set up on the
// host for the ports. Containers that publish nothing are fine. It is
// idempotent, and finishes a rewrite that a crash interrupted.
func (b *Bridge) Unpublish(ctx context.Context, containerIDs []string) error {
	if len(containerIDs) == 0 {
		return nil
	}
	gone := make(map[string]bool, len(containerIDs))
	for _, id := range containerIDs {
		gone[id] = true
	}
	unlock, err := b.portsLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := b.readPortRecords()
	if err != nil {
		return err
	}
	var errs []error
	var dropped []netip.Addr
	kept := recs[:0]
	for _, r := range recs {
		var rest []Endpoint
		for _, t := range r.Targets {
			if !gone[t.ContainerID] {
				rest = append(rest, t)
			} else {
				dropped = append(dropped, t.Address.Addr())
			}
		}
		switch {
		case len(rest) == len(r.Targets) && len(r.Chains) == 1:
			kept = append(kept, r)
		case len(rest) == 0:
			if err := b.unpublishPort(r); err != nil {
				errs = append(errs, err)
				kept = append(kept, r)
			}
		default:
			if err := b.rewritePort(r, rest); err != nil {
				errs = append(errs, err)
			}
			kept = append(kept, r)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := b.reconcileHost(kept); err != nil {
		return err
	}
	b.forgetFlows(dropped)
	return nil
}

// forgetFlows deletes the kernel's connection-tracking entries of flows
// DNATed to the given addresses. The DNAT happens once per flow, so
// without this a UDP client that sends again from the same port (a DNS
// resolver, or an ephemeral port reused within the 30 s UDP timeout) goes
// on to a removed replica (Docker and CNI's portmap flush them too).
// TCP flows to a removed replica die with it. A failure (no
// nf_conntrack_netlink) is logged: the rules are right, old flows age out.
func (b *Bridge) forgetFlows(addrs []netip.Addr) {
	var filters []netlink.CustomConntrackFilter
	for _, a := range addrs {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(netlink.ConntrackReplySrcIP, a.AsSlice()); err == nil {
			filters = append(filters, f)
		}
	}
	if len(filters) == 0 {
		return
	}
	var n uint
	err := b.inHost(func() (err error) { // the table of the namespace the rules are in
		n, err = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
		return err
	})
	if err != nil {
		b.log.Warn("forget the flows of unpublished replicas", "network", b.name, "error", err)
		return
	}
	b.log.Debug("forgot flows of unpublished replicas", "network", b.name, "replicas", len(addrs), "flows", n)
}

// rewritePort replaces r's chain with one for targets.
func (b *Bridge) rewritePort(r *portRecord, targets []Endpoint) error {
	old := r.Chains
	r.Chains = append(slices.Clone(old), newChainName(r.Port))
	if err := b.writePortRecord(r); err != nil {
		return err
	}
	if err := b.swapChain(&portRecord{Port: r.Port, Chains: r.Chains, Targets: targets}, old); err != nil {
		return err
	}
	b.log.Debug("rewrote published port", "port", r.Port.HostAddr(), "containers", len(targets), "chain", r.chain(), "old_chains", old)
	r.Chains, r.Targets = r.Chains[len(r.Chains)-1:], targets
	return b.writePortRecord(r)
}

// unpublishPort removes r's dispatch rules and chains, then its record.
func (b *Bridge) unpublishPort(r *portRecord) error {
	if err := b.swapChain(&portRecord{Port: r.Port}, r.Chains); err != nil {
		return err
	}
	if err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		return removeHookedIfEmpty(ipt, dispatchChain)
	}); err != nil {
		return fmt.Errorf("port %s: %w", r.Port.HostAddr(), err)
	}
	b.log.Debug("unpublished port", "port", r.Port.HostAddr(), "chains", r.Chains)
	return b.removePortFile(r)
}

// swapChain makes r's current chain afresh with the DNAT rules for its
// targets and, if the port is switched on (PIRUN-PORTS exists), its
// dispatch rule; and it deletes the dispatch rules and the chains of old
// that exist. A record without chains only deletes. It is one
// iptables-restore transaction: at no moment does the port lead nowhere,
// nor to two chains. go-iptables runs iptables once per rule, which for a
// large group takes seconds (1,000 rules: 8 s, against 0.07 s here), and
// has no transactions.
func (b *Bridge) swapChain(r *portRecord, old []string) error {
	err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		dispatching, err := ipt.ChainExists(dispatchChain.table, dispatchChain.name)
		if err != nil {
			return fmt.Errorf("look up chain %s: %w", dispatchChain.name, err)
		}
		var lines []string
		if len(r.Chains) > 0 {
			c := r.chain()
			lines = append(lines, ":"+c+" - [0:0]") // made, or flushed
			for _, spec := range dnatSpecs(r.Port, r.Targets) {
				lines = append(lines, "-A "+c+" "+strings.Join(spec, " "))
			}
			if dispatching && len(old) > 0 {
				lines = append(lines, "-I "+dispatchChain.name+" 1 "+strings.Join(dispatchSpec(r.Port, c), " "))
			}
		}
		for _, c := range old {
			if len(r.Chains) > 0 && c == r.chain() {
				continue
			}
			// (No rule can jump to a chain that does not exist.)
			if ok, err := ipt.ChainExists("nat", c); err != nil {
				return fmt.Errorf("look up chain %s: %w", c, err)
			} else if !ok {
				continue
			}
			if dispatching {
				spec := dispatchSpec(r.Port, c)
				if ok, err := ipt.Exists(dispatchChain.table, dispatchChain.name, spec...); err != nil {
					return fmt.Errorf("check rule %q in %s: %w", strings.Join(spec, " "), dispatchChain.name, err)
				} else if ok {
					lines = append(lines, "-D "+dispatchChain.name+" "+strings.Join(spec, " "))
				}
			}
			lines = append(lines, "-F "+c, "-X "+c)
		}
		return restoreNat(lines)
	})
	if err != nil {
		return fmt.Errorf("port %s: %w", r.Port.HostAddr(), err)
	}
	return nil
}

// restoreNat applies lines to the nat table in one transaction
// (iptables-restore --noflush). Call it in the host namespace.
func restoreNat(lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	path, err := exec.LookPath("iptables-restore")
	if err != nil {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	cmd := exec.Command(path, "-w", "10", "--noflush")
	cmd.Stdin = strings.NewReader("*nat\n" + strings.Join(lines, "\n") + "\nCOMMIT\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// insertDispatch switches p on: the rule of PIRUN-PORTS that jumps to
// chain goes first.
func (b *Bridge) insertDispatch(p PortMapping, chain string) error {
	err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		if err := ensureHooked(ipt, dispatchChain); err != nil {
			return err
		}
		spec := dispatchSpec(p, chain)
		if err := ipt.Insert(dispatchChain.table, dispatchChain.name, 1, spec...); err != nil {
			return fmt.Errorf("add rule %q to %s: %w", strings.Join(spec, " "), dispatchChain.name, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("port %s: %w", p.HostAddr(), err)
	}
	return nil
}

// Reattach sets again, on the veth of a container restarted on the same
// endpoint, what Publish set on its old veth: hairpin mode, where the
// container is behind a port reachable from containers. A container behind
// no such port needs nothing.
func (b *Bridge) Reattach(ctx context.Context, ep Endpoint) error {
	unlock, err := b.portsLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := b.readPortRecords()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Port.fromBridge() && slices.ContainsFunc(r.Targets, func(t Endpoint) bool { return t.ContainerID == ep.ContainerID }) {
			return b.setHairpin([]Endpoint{ep})
		}
	}
	return nil
}

// setHairpin turns on hairpin mode on the endpoints' bridge ports, so that
// a container's connection to its own published port, sent back by the
// host through the port it came in by, is delivered. The setting goes
// with the veth.
func (b *Bridge) setHairpin(eps []Endpoint) error {
	for _, ep := range eps {
		l, err := b.nl.get().LinkByName(ep.HostIf)
		if err != nil {
			return fmt.Errorf("network %s: container %q: look up %s: %w", ep.Network, ep.ContainerID, ep.HostIf, err)
		}
		if err := b.nl.get().LinkSetHairpin(l, true); err != nil {
			return fmt.Errorf("network %s: container %q: hairpin mode on %s: %w", ep.Network, ep.ContainerID, ep.HostIf, err)
		}
	}
	return nil
}

// A hookedChain is one of pirun's chains with the jumps to it from the
// built-in chains.
type hookedChain struct {
	table, name string
	jumps       []jump
	// first keeps the jumps first in their chains (guards that must come
	// before pirun's own ACCEPT rules in PIRUN-FORWARD).
	first bool
}

type jump struct {
	from string
	spec []string
}

// ensureHooked makes sure the chain exists and is jumped to. Call it in
// the host namespace. iptables-nft 1.8.9 answers -S on a missing chain
// with "incompatible": chains are checked with ChainExists.
func ensureHooked(ipt *iptables.IPTables, c hookedChain) error {
	ok, err := ipt.ChainExists(c.table, c.name)
	if err != nil {
		return fmt.Errorf("look up chain %s: %w", c.name, err)
	}
	if !ok {
		if err := ipt.NewChain(c.table, c.name); err != nil {
			// Another pirun may have made it meanwhile.
			if ok, _ := ipt.ChainExists(c.table, c.name); !ok {
				return fmt.Errorf("create chain %s: %w", c.name, err)
			}
		}
	}
	for _, j := range c.jumps {
		if c.first {
			// (ListById would panic on an empty chain.)
			rules, err := ipt.List(c.table, j.from)
			if err != nil {
				return fmt.Errorf("list chain %s: %w", j.from, err)
			}
			if len(rules) > 1 && rules[1] == "-A "+j.from+" "+strings.Join(j.spec, " ") { // rules[0] is "-P CHAIN POLICY"
				continue
			}
			if err := ipt.Delete(c.table, j.from, j.spec...); err != nil && !isNotExist(err) {
				return fmt.Errorf("move jump to %s: %w", c.name, err)
			}
		} else if ok, err := ipt.Exists(c.table, j.from, j.spec...); err != nil {
			return fmt.Errorf("check jump to %s: %w", c.name, err)
		} else if ok {
			continue
		}
		if err := ipt.Insert(c.table, j.from, 1, j.spec...); err != nil {
			return fmt.Errorf("add jump from %s to %s: %w", j.from, c.name, err)
		}
	}
	return nil
}

// removeHookedIfEmpty deletes the chain and the jumps to it unless it
// holds rules (another pirun state directory's). What is gone is success.
func removeHookedIfEmpty(ipt *iptables.IPTables, c hookedChain) error {
	ok, err := ipt.ChainExists(c.table, c.name)
	if err != nil {
		return fmt.Errorf("look up chain %s: %w", c.name, err)
	}
	if ok {
		rules, err := ipt.List(c.table, c.name)
		if err != nil {
			return fmt.Errorf("list chain %s: %w", c.name, err)
		}
		if len(rules) > 1 { // "-N CHAIN" and rules
			return nil
		}
	}
	var errs []error
	for _, j := range c.jumps {
		if err := ipt.Delete(c.table, j.from, j.spec...); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("delete jump from %s to %s: %w", j.from, c.name, err))
		}
	}
	if ok && len(errs) == 0 {
		if err := ipt.DeleteChain(c.table, c.name); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("delete chain %s: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}
