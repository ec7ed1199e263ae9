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

// addrRange is the container part of a subnet: from the address after the
// gateway to the one before the broadcast address.
type addrRange struct {
	first, last uint32
}

func newAddrRange(p netip.Prefix) addrRange {
	network := u32(p.Masked().Addr())
	broadcast := network | (1<<(32-p.Bits()) - 1)
	return addrRange{first: network + 2, last: broadcast - 1}
}

func (r addrRange) size() int {
	if r.last < r.first {
		return 0
	}
	return int(r.last-r.first) + 1
}

func (r addrRange) contains(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	v := u32(a)
	return v >= r.first && v <= r.last
}

// candidates yields every address of r once, round-robin: starting after
// hint and wrapping around, like CNI host-local. An invalid hint or one
// outside r starts at the beginning.
func (r addrRange) candidates(hint netip.Addr) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		n := r.size()
		if n == 0 {
			return
		}
		start := r.first
		if r.contains(hint) && u32(hint) != r.last {
			start = u32(hint) + 1
		}
		v := start
		for range n {
			if !yield(addrOf(v)) {
				return
			}
			if v == r.last {
				v = r.first
			} else {
				v++
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
	r := newAddrRange(b.subnet)
	used := make(map[netip.Addr]struct{}, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file
		}
		a, err := netip.ParseAddr(e.Name())
		if err != nil || !r.contains(a) {
			return nil, fmt.Errorf("network %s: allocation %s is not a container address of %s (was the state made with another subnet?): %w",
				b.name, e.Name(), b.subnet, ErrInvalidConfig)
		}
		used[a] = struct{}{}
	}
	return used, nil
}

// reserve takes len(ids) free addresses, round-robin from the hint, and
// records the last one as the new hint. Call it under the lock. On error it
// frees what it took.
func (b *Bridge) reserve(r addrRange, used map[netip.Addr]struct{}, ids []string) (addrs []netip.Addr, err error) {
	defer func() {
		if err != nil {
			b.unreserve(addrs)
			addrs = nil
		}
	}()
	hint := b.readHint()
	for a := range r.candidates(hint) {
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
			eps = append(eps, Endpoint{Network: b.name, ContainerID: id, Address: netip.PrefixFrom(a, b.subnet.Bits())})
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
