package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/pirun/pirun/internal/fsutil"
)

// State of a macvlan network, under stateDir/macvlan/<parent>/. The lock,
// the allocation files and the hint are those of the bridge driver (see
// state.go and ipam.go); network.json is the macvlan network's own:
//
//	lock           flock held for every read-modify-write, by every process
//	ips/<addr>     one file per reserved address, content = container id, or
//	               hostOwner for the address of the host's own macvlan
//	last_reserved  where the next search starts (round-robin)
//	network.json   the network in use: subnet, gateway, host-side link and
//	               its address; written before that link is made, removed
//	               after it is deleted with the last container
const (
	macvlanDir        = "macvlan"
	macvlanRecordFile = "network.json"
	// hostOwner owns the address of the host-side macvlan link. It is not
	// a container id (those are hex), so no container can free it.
	hostOwner = "host"
)

// macvlanRecord is network.json: everything the network has put on the
// host, so that Release and a later Allocate (after a crash) remove
// exactly that.
type macvlanRecord struct {
	Parent      string       `json:"parent"`
	Subnet      netip.Prefix `json:"subnet"`
	Gateway     netip.Addr   `json:"gateway"`
	HostIf      string       `json:"host_if"`      // "pirun-mv" + the parent's ifindex
	HostAddress netip.Addr   `json:"host_address"` // on HostIf, as a /32
}

func (m *Macvlan) readRecord() (*macvlanRecord, error) {
	data, err := os.ReadFile(filepath.Join(m.dir, macvlanRecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("macvlan network on %s: read %s: %w", m.parent, macvlanRecordFile, err)
	}
	var rec macvlanRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("macvlan network on %s: %s is corrupt: %w", m.parent, macvlanRecordFile, err)
	}
	// rm acts on what the record names: it must name only what pirun makes.
	if rec.Parent != m.parent || !isHostMacvlanName(rec.HostIf) || !validSubnet(rec.Subnet) ||
		!rec.Subnet.Contains(rec.HostAddress) || !rec.Subnet.Contains(rec.Gateway) {
		return nil, fmt.Errorf("macvlan network on %s: %s names parent %q, link %q, subnet %s, host address %s, gateway %s: %w",
			m.parent, macvlanRecordFile, rec.Parent, rec.HostIf, rec.Subnet, rec.HostAddress, rec.Gateway, ErrInvalidConfig)
	}
	return &rec, nil
}

func (m *Macvlan) writeRecord(rec *macvlanRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, macvlanRecordFile), data, 0o600); err != nil {
		return fmt.Errorf("macvlan network on %s: write %s: %w", m.parent, macvlanRecordFile, err)
	}
	return nil
}

// readOwners maps each reserved address to its owner. Call it under the lock.
func (m *Macvlan) readOwners() (map[netip.Addr]string, error) {
	entries, err := os.ReadDir(filepath.Join(m.dir, ipsDir))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("macvlan network on %s: read allocations: %w", m.parent, err)
	}
	owners := make(map[netip.Addr]string, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file
		}
		a, err := netip.ParseAddr(e.Name())
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("macvlan network on %s: allocation %q is not an IPv4 address: %w", m.parent, e.Name(), ErrInvalidConfig)
		}
		data, err := os.ReadFile(filepath.Join(m.dir, ipsDir, e.Name()))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("macvlan network on %s: read allocation %s: %w", m.parent, a, err)
		}
		owners[a] = string(data)
	}
	return owners, nil
}

// containerCount is how many of the allocations are containers'.
func containerCount(owners map[netip.Addr]string) int {
	n := 0
	for _, id := range owners {
		if id != hostOwner {
			n++
		}
	}
	return n
}

// subnetHosts yields the host addresses of p (neither its network nor its
// broadcast address) once each, round-robin: starting after hint and
// wrapping around, like the bridge's candidates.
func subnetHosts(p netip.Prefix, hint netip.Addr) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		base := u32(p.Masked().Addr())
		span := uint64(1) << (32 - p.Bits())
		off := uint64(1)
		if p.Contains(hint) {
			off = uint64(u32(hint)-base) + 1
		}
		for range span - 2 {
			if off >= span-1 {
				off = 1
			}
			if !yield(addrOf(base + uint32(off))) {
				return
			}
			off++
		}
	}
}

// hostCount is how many host addresses p has.
func hostCount(p netip.Prefix) int { return int(uint64(1)<<(32-p.Bits())) - 2 }

// reserveAddrs takes n free addresses of rec's subnet for owners ids (or
// hostOwner), skipping taken ones, and records the last as the new hint.
// Call it under the lock. On error it frees what it took.
func (m *Macvlan) reserveAddrs(subnet netip.Prefix, taken map[netip.Addr]bool, ids []string) (addrs []netip.Addr, err error) {
	defer func() {
		if err != nil {
			m.unreserve(addrs)
			addrs = nil
		}
	}()
	for a := range subnetHosts(subnet, m.readHint()) {
		if len(addrs) == len(ids) {
			break
		}
		if taken[a] {
			continue
		}
		err := createExclusive(filepath.Join(m.dir, ipsDir, a.String()), []byte(ids[len(addrs)]))
		if errors.Is(err, os.ErrExist) {
			continue // written outside the lock; never ours
		}
		if err != nil {
			return addrs, fmt.Errorf("macvlan network on %s: reserve %s: %w", m.parent, a, err)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) < len(ids) {
		return addrs, fmt.Errorf("macvlan network on %s: allocate %d addresses in %s: found %d: %w", m.parent, len(ids), subnet, len(addrs), ErrSubnetFull)
	}
	if err := syncFS(filepath.Join(m.dir, ipsDir)); err != nil {
		return addrs, fmt.Errorf("macvlan network on %s: sync allocations: %w", m.parent, err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, hintFile), []byte(addrs[len(addrs)-1].String()), 0o600); err != nil {
		return addrs, fmt.Errorf("macvlan network on %s: write allocation hint: %w", m.parent, err)
	}
	return addrs, nil
}

func (m *Macvlan) unreserve(addrs []netip.Addr) {
	for _, a := range addrs {
		if err := os.Remove(filepath.Join(m.dir, ipsDir, a.String())); err != nil && !os.IsNotExist(err) {
			m.log.Debug("roll back reservation", "parent", m.parent, "address", a, "error", err)
		}
	}
}

func (m *Macvlan) readHint() netip.Addr {
	data, err := os.ReadFile(filepath.Join(m.dir, hintFile))
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// freeAddr removes the allocation of a if owner still holds it. Call it
// under the lock.
func (m *Macvlan) freeAddr(a netip.Addr, owner string) error {
	path := filepath.Join(m.dir, ipsDir, a.String())
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("macvlan network on %s: read allocation %s: %w", m.parent, a, err)
	}
	if string(data) != owner {
		m.log.Debug("address owned by someone else, kept", "parent", m.parent, "address", a, "owner", string(data))
		return nil
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("macvlan network on %s: free %s: %w", m.parent, a, err)
	}
	return nil
}
