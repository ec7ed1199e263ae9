package network

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/pirun/pirun/internal/fsutil"
)

// State layout under stateDir/<bridge>/:
//
//	lock           flock held for every read-modify-write
//	ips/<addr>     one file per reserved address, content = container id
//	last_reserved  the address reserved last, where the next search starts
//	sysctl.json    the sysctls pirun raised, with their original values
const (
	lockFile   = "lock"
	ipsDir     = "ips"
	hintFile   = "last_reserved"
	sysctlFile = "sysctl.json"
)

// sliceBits is the prefix length of one bridge's share of the subnet: a
// /22 holds 1,024 addresses, 1,021 of them for containers (its network
// address, its gateway and its broadcast address are taken), which fits in
// the 1,023 ports of a Linux bridge. A subnet of /22 or smaller is one slice.
const sliceBits = 22

// addrRange is the container part of a subnet cut into slices of equal
// size, one per bridge: in each slice, the addresses after the gateway (its
// first host address) up to the one before its broadcast address.
type addrRange struct {
	base   uint32 // the subnet's network address
	span   uint64 // addresses in the subnet
	slice  uint64 // addresses in one slice
	slices int
}

func newAddrRange(p netip.Prefix) addrRange {
	bits := max(p.Bits(), sliceBits)
	r := addrRange{base: u32(p.Masked().Addr()), span: 1 << (32 - p.Bits()), slice: 1 << (32 - bits)}
	r.slices = int(r.span / r.slice)
	return r
}

// perSlice is how many container addresses one slice holds.
func (r addrRange) perSlice() int { return int(r.slice) - 3 }

// size is how many container addresses the whole range holds.
func (r addrRange) size() int { return r.slices * r.perSlice() }

// sliceOf returns the slice an address of the subnet belongs to.
func (r addrRange) sliceOf(a netip.Addr) (int, bool) {
	if !a.Is4() {
		return 0, false
	}
	off := uint64(u32(a) - r.base)
	if u32(a) < r.base || off >= r.span {
		return 0, false
	}
	return int(off / r.slice), true
}

// contains reports whether a is a container address: in the subnet, and
// neither a slice's network, gateway nor broadcast address.
func (r addrRange) contains(a netip.Addr) bool {
	if _, ok := r.sliceOf(a); !ok {
		return false
	}
	return r.usable(uint64(u32(a) - r.base))
}

func (r addrRange) usable(off uint64) bool {
	in := off % r.slice
	return in > 1 && in < r.slice-1
}

// slicePrefix and gateway describe slice k.
func (r addrRange) slicePrefix(k int) netip.Prefix {
	bits := 32 - bitsLen(r.slice)
	return netip.PrefixFrom(addrOf(r.base+uint32(uint64(k)*r.slice)), bits)
}

func (r addrRange) gateway(k int) netip.Addr { return r.slicePrefix(k).Addr().Next() }

func bitsLen(n uint64) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}

// candidates yields every container address of r once, round-robin:
// starting after hint and wrapping around, like CNI host-local, so slices
// fill one after the other. An invalid hint or one outside r starts at the
// beginning.
func (r addrRange) candidates(hint netip.Addr) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		start := uint64(0)
		if _, ok := r.sliceOf(hint); ok {
			start = (uint64(u32(hint)-r.base) + 1) % r.span
		}
		off := start
		for range r.span {
			if r.usable(off) && !yield(addrOf(r.base+uint32(off))) {
				return
			}
			if off++; off == r.span {
				off = 0
			}
		}
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrOf(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// readAllocations lists the reserved addresses. Call it under the lock.
func (b *Bridge) readAllocations() (map[netip.Addr]struct{}, error) {
	entries, err := os.ReadDir(filepath.Join(b.dir, ipsDir))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("network %s: read allocations: %w", b.name, err)
	}
	used := make(map[netip.Addr]struct{}, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file
		}
		// Any address of the subnet counts: one that is now a slice's
		// gateway was a container's when the subnet was a single bridge.
		a, err := netip.ParseAddr(e.Name())
		if _, ok := b.r.sliceOf(a); err != nil || !ok {
			return nil, fmt.Errorf("network %s: allocation %s is not an address of %s (was the state made with another subnet?): %w",
				b.name, e.Name(), b.subnet, ErrInvalidConfig)
		}
		used[a] = struct{}{}
	}
	return used, nil
}

// reserve takes len(ids) free addresses, round-robin from the hint, and
// records the last one as the new hint. Call it under the lock. On error it
// frees what it took.
func (b *Bridge) reserve(used map[netip.Addr]struct{}, ids []string) (addrs []netip.Addr, err error) {
	defer func() {
		if err != nil {
			b.unreserve(addrs)
			addrs = nil
		}
	}()
	hint := b.readHint()
	for a := range b.r.candidates(hint) {
		if len(addrs) == len(ids) {
			break
		}
		if _, ok := used[a]; ok {
			continue
		}
		err := createExclusive(filepath.Join(b.dir, ipsDir, a.String()), []byte(ids[len(addrs)]))
		if errors.Is(err, os.ErrExist) {
			continue // written outside the lock; never ours
		}
		if err != nil {
			return addrs, fmt.Errorf("network %s: container %q: reserve %s: %w", b.name, ids[len(addrs)], a, err)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) < len(ids) {
		return addrs, fmt.Errorf("network %s: allocate %d addresses in %s: found %d: %w", b.name, len(ids), b.subnet, len(addrs), ErrSubnetFull)
	}
	if err := syncFS(filepath.Join(b.dir, ipsDir)); err != nil {
		return addrs, fmt.Errorf("network %s: sync allocations: %w", b.name, err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(b.dir, hintFile), []byte(addrs[len(addrs)-1].String()), 0o600); err != nil {
		return addrs, fmt.Errorf("network %s: write allocation hint: %w", b.name, err)
	}
	return addrs, nil
}

// unreserve removes allocation files this process has just created.
func (b *Bridge) unreserve(addrs []netip.Addr) {
	for _, a := range addrs {
		if err := os.Remove(filepath.Join(b.dir, ipsDir, a.String())); err != nil && !os.IsNotExist(err) {
			b.log.Debug("roll back reservation", "network", b.name, "address", a, "error", err)
		}
	}
}

func (b *Bridge) readHint() netip.Addr {
	data, err := os.ReadFile(filepath.Join(b.dir, hintFile))
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// ownedBy returns the endpoints (address and owner) of the allocations
// that name one of ids. Call it under the lock.
func (b *Bridge) ownedBy(ids map[string]bool) ([]Endpoint, error) {
	used, err := b.readAllocations()
	if err != nil {
		return nil, err
	}
	var eps []Endpoint
	for a := range used {
		data, err := os.ReadFile(filepath.Join(b.dir, ipsDir, a.String()))
		if err != nil {
			continue // freed meanwhile
		}
		if id := string(data); ids[id] {
			k, _ := b.r.sliceOf(a)
			eps = append(eps, Endpoint{Network: b.bridgeName(k), ContainerID: id, Address: netip.PrefixFrom(a, b.r.slicePrefix(k).Bits())})
		}
	}
	return eps, nil
}

// free removes ep's allocation if it still names ep's container. Call it
// under the lock.
func (b *Bridge) free(ep Endpoint) error {
	path := filepath.Join(b.dir, ipsDir, ep.Address.Addr().String())
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: container %q: read allocation %s: %w", b.name, ep.ContainerID, ep.Address.Addr(), err)
	}
	if string(data) != ep.ContainerID {
		b.log.Debug("address owned by another container, kept", "network", b.name, "address", ep.Address.Addr(), "owner", string(data))
		return nil
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("network %s: container %q: free %s: %w", b.name, ep.ContainerID, ep.Address.Addr(), err)
	}
	return nil
}
