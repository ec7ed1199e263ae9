package network

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// Info is what pirun holds on the host for one network: `pirun network ls`.
type Info struct {
	Name     string       `json:"name"`
	Subnet   netip.Prefix `json:"subnet"`
	Capacity int          `json:"capacity"` // containers the subnet holds
	InUse    int          `json:"in_use"`   // addresses allocated
	Unused   int          `json:"unused"`   // of which no container exists any more
	Bridges  []BridgeInfo `json:"bridges"`  // those with addresses or on the host
	Rules    []string     `json:"rules"`    // pirun's iptables rules for its bridges, as iptables -S prints them
	Sysctls  []SysctlInfo `json:"sysctls"`  // what pirun raised for the network
}

// BridgeInfo is one bridge of a network: its slice of the subnet, the
// containers allocated there and what the host has of it.
type BridgeInfo struct {
	Name       string       `json:"name"`
	Subnet     netip.Prefix `json:"subnet"`
	Gateway    netip.Addr   `json:"gateway"`
	Containers int          `json:"containers"` // addresses allocated in the slice
	Unused     int          `json:"unused"`     // of which no container exists any more
	Exists     bool         `json:"exists"`     // the bridge is on the host
	Ports      int          `json:"ports"`      // links attached to it
}

// SysctlInfo is a sysctl pirun raised: the value before, the value pirun
// set and the value now.
type SysctlInfo struct {
	Key      string `json:"key"`
	Original int    `json:"original"`
	Set      int    `json:"set"`
	Current  int    `json:"current"`
}

// PruneReport is what Prune removed.
type PruneReport struct {
	Addresses []netip.Addr `json:"addresses"` // allocations freed
	Links     []string     `json:"links"`     // bridges, and veths no allocation accounts for, deleted
	Rules     []string     `json:"rules"`     // iptables rules deleted
	Sysctls   []string     `json:"sysctls"`   // sysctls restored
	Kept      []string     `json:"kept"`      // what looked unused but was left, and why
}

// hostView is the network's part of the host: its bridges by slice and the
// links attached to each. Call it under the lock.
type hostView struct {
	bridges map[int]netlink.Link
	ports   map[int][]netlink.Link // by slice of the bridge they are attached to
}

func (b *Bridge) viewHost() (*hostView, error) {
	links, err := retryDump(b.nl.get().LinkList)
	if err != nil {
		return nil, fmt.Errorf("network %s: list links: %w", b.name, err)
	}
	v := &hostView{bridges: map[int]netlink.Link{}, ports: map[int][]netlink.Link{}}
	byIndex := map[int]int{}
	for _, l := range links {
		if k, ok := b.sliceOfBridge(l.Attrs().Name); ok {
			if _, isBridge := l.(*netlink.Bridge); isBridge {
				v.bridges[k] = l
				byIndex[l.Attrs().Index] = k
			}
		}
	}
	for _, l := range links {
		if k, ok := byIndex[l.Attrs().MasterIndex]; ok && l.Attrs().MasterIndex != 0 {
			v.ports[k] = append(v.ports[k], l)
		}
	}
	return v, nil
}

// owners maps each allocated address to its container id. Call it under
// the lock.
func (b *Bridge) owners() (map[netip.Addr]string, error) {
	used, err := b.readAllocations()
	if err != nil {
		return nil, err
	}
	m := make(map[netip.Addr]string, len(used))
	for a := range used {
		data, err := os.ReadFile(filepath.Join(b.dir, ipsDir, a.String()))
		if err != nil {
			continue // freed meanwhile
		}
		m[a] = string(data)
	}
	return m, nil
}

// ourRules returns the rules of PIRUN-FORWARD that name one of the
// network's bridges, and the bridges they name.
func (b *Bridge) ourRules() (rules []string, bridges map[string]bool, err error) {
	bridges = map[string]bool{}
	err = b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		if ok, err := ipt.ChainExists("filter", forwardChain); err != nil || !ok {
			return err
		}
		all, err := ipt.List("filter", forwardChain)
		if err != nil {
			return fmt.Errorf("list chain %s: %w", forwardChain, err)
		}
		for _, r := range all {
			f := strings.Fields(r)
			for i := 0; i+1 < len(f); i++ {
				if f[i] != "-i" && f[i] != "-o" {
					continue
				}
				if _, ok := b.sliceOfBridge(f[i+1]); ok {
					rules = append(rules, r)
					bridges[f[i+1]] = true
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("network %s: %w", b.name, err)
	}
	return rules, bridges, nil
}

func (b *Bridge) sysctlInfo() ([]SysctlInfo, error) {
	rec, err := b.readSysctlRecord()
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", b.name, err)
	}
	var out []SysctlInfo
	err = b.inHost(func() error {
		for _, k := range slices.Sorted(maps.Keys(rec)) {
			cur, _ := readSysctl(b.sysctlDir, k)
			out = append(out, SysctlInfo{Key: k, Original: rec[k].Original, Set: rec[k].Set, Current: cur})
		}
		return nil
	})
	return out, err
}

// Inspect describes what the network holds on the host. inUse tells
// whether a container still exists (nil: every owner counts as existing);
// allocations whose container does not are counted as unused.
func (b *Bridge) Inspect(ctx context.Context, inUse func(containerID string) bool) (*Info, error) {
	unlock, err := b.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	owners, err := b.owners()
	if err != nil {
		return nil, err
	}
	host, err := b.viewHost()
	if err != nil {
		return nil, err
	}
	info := &Info{Name: b.name, Subnet: b.subnet, Capacity: b.r.size(), InUse: len(owners)}
	per := map[int]*BridgeInfo{}
	slice := func(k int) *BridgeInfo {
		if bi, ok := per[k]; ok {
			return bi
		}
		bi := &BridgeInfo{Name: b.bridgeName(k), Subnet: b.r.slicePrefix(k), Gateway: b.r.gateway(k)}
		per[k] = bi
		return bi
	}
	for a, id := range owners {
		k, _ := b.r.sliceOf(a)
		bi := slice(k)
		bi.Containers++
		if inUse != nil && !inUse(id) {
			bi.Unused++
			info.Unused++
		}
	}
	for k := range host.bridges {
		bi := slice(k)
		bi.Exists = true
		bi.Ports = len(host.ports[k])
	}
	for _, k := range slices.Sorted(maps.Keys(per)) {
		info.Bridges = append(info.Bridges, *per[k])
	}
	if info.Rules, _, err = b.ourRules(); err != nil {
		return nil, err
	}
	if info.Sysctls, err = b.sysctlInfo(); err != nil {
		return nil, err
	}
	// Lists, never null, in JSON.
	info.Bridges = nonNil(info.Bridges)
	info.Rules = nonNil(info.Rules)
	info.Sysctls = nonNil(info.Sysctls)
	return info, nil
}

// Prune removes what the network holds for containers that no longer
// exist (inUse reports false): their allocations and host veths; then the
// bridges of slices left without an allocation, the iptables rules of
// bridges that are gone, and, when the network has no allocation left, the
// chain (if no other network uses it) and the sysctls pirun raised. It
// holds the network's lock throughout and asks inUse under it, so a
// container being started (whose record exists before its address) is
// never taken. A bridge that still has ports is in use (by another state
// directory's containers, say) and is kept, as is a bridge carrying an
// address pirun did not give it.
func (b *Bridge) Prune(ctx context.Context, inUse func(containerID string) bool) (*PruneReport, error) {
	if inUse == nil {
		return nil, fmt.Errorf("network %s: prune needs to know which containers exist: %w", b.name, ErrInvalidConfig)
	}
	unlock, err := b.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rep := &PruneReport{Addresses: []netip.Addr{}, Links: []string{}, Rules: []string{}, Sysctls: []string{}, Kept: []string{}}
	var errs []error

	owners, err := b.owners()
	if err != nil {
		return nil, err
	}
	live := map[string]bool{} // host veths of the allocations kept
	for _, a := range slices.SortedFunc(maps.Keys(owners), netip.Addr.Compare) {
		id := owners[a]
		if inUse(id) {
			live[HostIfName(id)] = true
			continue
		}
		k, _ := b.r.sliceOf(a)
		ep := Endpoint{Network: b.bridgeName(k), ContainerID: id, Address: netip.PrefixFrom(a, b.r.slicePrefix(k).Bits()), HostIf: HostIfName(id)}
		if err := b.deleteVeth(ep); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := b.free(ep); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Addresses = append(rep.Addresses, a)
	}
	used, err := b.readAllocations()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	left := b.bySlice(used)

	host, err := b.viewHost()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	// pirun's veths on its bridges that no allocation accounts for.
	for _, k := range slices.Sorted(maps.Keys(host.ports)) {
		var kept []netlink.Link
		for _, l := range host.ports[k] {
			name := l.Attrs().Name
			if _, isVeth := l.(*netlink.Veth); !isVeth || live[name] || !isHostIfName(name) {
				kept = append(kept, l)
				continue
			}
			if err := b.nl.get().LinkDel(l); err != nil && !isLinkNotFound(err) {
				errs = append(errs, fmt.Errorf("network %s: delete %s: %w", b.name, name, err))
				kept = append(kept, l)
				continue
			}
			rep.Links = append(rep.Links, name)
		}
		host.ports[k] = kept
	}
	// Bridges of empty slices.
	gone := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(host.bridges)) {
		name := b.bridgeName(k)
		if left[k] > 0 {
			continue
		}
		if n := len(host.ports[k]); n > 0 {
			rep.Kept = append(rep.Kept, fmt.Sprintf("bridge %s: no allocation here, but %d links are attached to it", name, n))
			continue
		}
		if ok, why := b.holdsOnlyGateway(host.bridges[k], k); !ok {
			rep.Kept = append(rep.Kept, fmt.Sprintf("bridge %s: %s", name, why))
			continue
		}
		if err := b.deleteBridge(name); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Links = append(rep.Links, name)
		gone[name] = true
	}
	// Rules of bridges that no longer exist.
	_, ruled, err := b.ourRules()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	var unrule []string
	for name := range ruled {
		k, _ := b.sliceOfBridge(name)
		if _, exists := host.bridges[k]; gone[name] || !exists {
			unrule = append(unrule, name)
		}
	}
	slices.Sort(unrule)
	if len(unrule) > 0 || len(used) == 0 {
		before, _, _ := b.ourRules()
		errs = append(errs, b.removeIptables(unrule))
		after, _, _ := b.ourRules()
		for _, r := range before {
			if !slices.Contains(after, r) {
				rep.Rules = append(rep.Rules, r)
			}
		}
	}
	if len(used) == 0 {
		rec, _ := b.readSysctlRecord()
		if err := b.restoreSysctls(); err != nil {
			errs = append(errs, err)
		} else {
			rep.Sysctls = append(rep.Sysctls, slices.Sorted(maps.Keys(rec))...)
		}
		if err := os.Remove(filepath.Join(b.dir, hintFile)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("network %s: %w", b.name, err))
		}
	}
	return rep, errors.Join(errs...)
}

// holdsOnlyGateway reports whether a bridge named like slice k's carries
// no IPv4 address but the gateway pirun gives it (with the slice's prefix
// length, or the subnet's, as pirun did before slices).
func (b *Bridge) holdsOnlyGateway(l netlink.Link, k int) (bool, string) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return b.nl.get().AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return false, fmt.Sprintf("cannot list its addresses: %v", err)
	}
	gw := b.r.gateway(k)
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr() != gw || (p.Bits() != b.r.slicePrefix(k).Bits() && p.Bits() != b.subnet.Bits()) {
			return false, fmt.Sprintf("it has address %s, not one pirun gave it", p)
		}
	}
	return true, ""
}

// isHostIfName reports whether name is one HostIfName makes from a
// container id: "pr" and 10 lowercase hex digits.
func isHostIfName(name string) bool {
	hex, ok := strings.CutPrefix(name, "pr")
	if !ok || len(hex) != 10 {
		return false
	}
	for _, c := range hex {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
