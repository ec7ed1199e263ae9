package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newParent makes an empty bridge to serve as a macvlan parent, in the
// current thread's (test) namespace, and returns its link.
func newParent(t *testing.T, name string, addr string) netlink.Link {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatalf("parent %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(addr))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// newLANHost makes a namespace standing for another host of the parent's
// LAN: a veth whose peer is a port of the parent bridge, with addr.
func newLANHost(t *testing.T, parent netlink.Link, port string, addr netip.Prefix) netns.NsHandle {
	t.Helper()
	ns, _ := newNS(t)
	t.Cleanup(func() { ns.Close() })
	attrs := netlink.NewLinkAttrs()
	attrs.Name = port
	attrs.MasterIndex = parent.Attrs().Index
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatal(err)
	}
	p, _ := netlink.LinkByName(port)
	if err := netlink.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, _ := h.LinkByName("eth0")
	if err := h.AddrAdd(e, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(e); err != nil {
		t.Fatal(err)
	}
	return ns
}

func newMacvlan(t *testing.T, dir string, cfg MacvlanConfig) *Macvlan {
	t.Helper()
	m, err := NewMacvlan(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// assertMacvlanClean checks that nothing of the network on parent is left:
// no pirun-mv link, no route or address of the subnet beyond the parent's
// own, no allocation, hint or record.
func assertMacvlanClean(t *testing.T, dir, parent string, subnet netip.Prefix) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := netlink.LinkByName(parent)
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, hostMacvlanPrefix) {
			t.Errorf("link %s left behind", l.Attrs().Name)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if d, ok := prefixOf(r.Dst); ok && d.Bits() == 32 && subnet.Contains(d.Addr()) && (p == nil || r.LinkIndex != p.Attrs().Index) {
			t.Errorf("route %s left behind", d)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, macvlanDir, parent, ipsDir))
	if len(entries) != 0 {
		t.Errorf("%d allocations left behind", len(entries))
	}
	for _, f := range []string{hintFile, macvlanRecordFile} {
		if _, err := os.Stat(filepath.Join(dir, macvlanDir, parent, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

func TestMacvlanAttachConnectivity(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		subnet := netip.MustParsePrefix("10.77.0.0/24")
		parent := newParent(t, "lan0", "")
		lanHost := newLANHost(t, parent, "lanport", netip.MustParsePrefix("10.77.0.200/24"))
		m := newMacvlan(t, dir, MacvlanConfig{Parent: "lan0", Subnet: subnet})

		ids := testIDs("a", 2)
		eps, err := m.Allocate(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		hostIf := hostMacvlanName(parent.Attrs().Index)
		for i, ep := range eps {
			want := Endpoint{
				Network: "lan0", Driver: DriverMacvlan, Parent: "lan0", ContainerID: ids[i],
				Address: netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", i+3)),
				Gateway: netip.MustParseAddr("10.77.0.1"),
				HostIf:  hostIf,
			}
			if ep != want {
				t.Errorf("endpoint %d = %+v, want %+v", i, ep, want)
			}
		}
		hl, err := netlink.LinkByName(hostIf)
		if err != nil {
			t.Fatalf("host-side macvlan: %v", err)
		}
		if mv, ok := hl.(*netlink.Macvlan); !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || mv.ParentIndex != parent.Attrs().Index || hl.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("host-side link %s: %+v", hostIf, hl)
		}
		if a, _ := netlink.AddrList(hl, netlink.FAMILY_V4); len(a) != 1 || a[0].IPNet.String() != "10.77.0.2/32" {
			t.Errorf("host-side link addresses %v, want 10.77.0.2/32", a)
		}
		if a, _ := netlink.AddrList(hl, netlink.FAMILY_V6); len(a) != 0 {
			t.Errorf("host-side link has IPv6 addresses %v", a)
		}

		var cns [2]netns.NsHandle
		for i := range cns {
			ns, path := newNS(t)
			defer ns.Close()
			cns[i] = ns
			// From a thread sitting in yet another namespace, as the launcher.
			errc := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				if _, err := netns.New(); err != nil {
					errc <- err
					return
				}
				errc <- m.Attach(ctx, eps[i], path)
			}()
			if err := <-errc; err != nil {
				t.Fatalf("Attach %d: %v", i, err)
			}
		}
		h, err := netlink.NewHandleAt(cns[0])
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if mv, ok := eth0.(*netlink.Macvlan); !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || eth0.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("container eth0: %+v", eth0)
		}
		if a, _ := h.AddrList(eth0, netlink.FAMILY_V4); len(a) != 1 || a[0].IPNet.String() != eps[0].Address.String() {
			t.Errorf("container addresses %v, want %s", a, eps[0].Address)
		}
		if a, _ := h.AddrList(eth0, netlink.FAMILY_V6); len(a) != 0 {
			t.Errorf("container eth0 has IPv6 addresses %v", a)
		}
		routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(eps[0].Gateway.AsSlice())
		}) {
			t.Errorf("no default route via %s in %v", eps[0].Gateway, routes)
		}

		c0, c1 := eps[0].Address.Addr(), eps[1].Address.Addr()
		mustReach(t, 0, cns[0], c0, "host to container 0")
		mustReach(t, 0, cns[1], c1, "host to container 1")
		mustReach(t, lanHost, cns[0], c0, "LAN host to container 0")
		mustReach(t, cns[1], lanHost, netip.MustParseAddr("10.77.0.200"), "container 1 to the LAN host")
		mustReach(t, cns[0], cns[1], c1, "container 0 to container 1")

		// Release one: its route goes, the network stays.
		if err := m.Release(ctx, eps[:1]); err != nil {
			t.Fatal(err)
		}
		routes, _ = netlink.RouteList(hl, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.Equal(c0.AsSlice()) {
				t.Errorf("route to released %s still there", c0)
			}
		}
		if _, err := netlink.LinkByName(hostIf); err != nil {
			t.Errorf("host-side link gone with a container left: %v", err)
		}
		// The last one takes the network; again is success.
		if err := m.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		assertMacvlanClean(t, dir, "lan0", subnet)
		if err := m.Release(ctx, eps); err != nil {
			t.Errorf("second Release: %v", err)
		}
	})
}

func TestMacvlanConfig(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		newParent(t, "bare0", "")
		newParent(t, "addr0", "10.78.0.10/24")

		// No subnet and nothing to take it from.
		if err := newMacvlan(t, dir, MacvlanConfig{Parent: "bare0"}).Check(ctx, 1); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("no subnet: %v, want ErrInvalidConfig", err)
		}
		if _, err := NewMacvlan(dir, MacvlanConfig{Parent: "bare0", Subnet: netip.MustParsePrefix("10.79.0.1/24")}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("subnet with host bits: %v, want ErrInvalidConfig", err)
		}
		if err := newMacvlan(t, dir, MacvlanConfig{Parent: "bare0", Subnet: netip.MustParsePrefix("10.79.0.0/24"), Gateway: netip.MustParseAddr("10.80.0.1")}).Check(ctx, 1); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("gateway outside the subnet: %v, want ErrInvalidConfig", err)
		}
		if err := newMacvlan(t, dir, MacvlanConfig{Parent: "nosuch0", Subnet: netip.MustParsePrefix("10.79.0.0/24")}).Check(ctx, 1); err == nil {
			t.Error("missing parent: no error")
		}

		// Derived from the parent's address; the host's own address is
		// never given out.
		m := newMacvlan(t, dir, MacvlanConfig{Parent: "addr0"})
		ids := testIDs("b", 12)
		eps, err := m.Allocate(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range eps {
			if a := ep.Address.Addr(); ep.Address.Bits() != 24 || !netip.MustParsePrefix("10.78.0.0/24").Contains(a) || a.String() == "10.78.0.10" || a.String() == "10.78.0.1" {
				t.Errorf("address %s", ep.Address)
			}
			if ep.Gateway.String() != "10.78.0.1" {
				t.Errorf("gateway %s, want 10.78.0.1", ep.Gateway)
			}
		}
		// The host reaches the containers through its macvlan even
		// though the parent's own route covers the subnet.
		rt, err := netlink.RouteGet(eps[0].Address.Addr().AsSlice())
		if err != nil || len(rt) != 1 {
			t.Fatalf("route to %s: %v %v", eps[0].Address, rt, err)
		}
		if l, _ := netlink.LinkByIndex(rt[0].LinkIndex); l == nil || !strings.HasPrefix(l.Attrs().Name, hostMacvlanPrefix) {
			t.Errorf("route to %s goes through %v", eps[0].Address, l)
		}
		// Another subnet while it has containers: refused; the same, or
		// none (the one in use), is fine.
		other := newMacvlan(t, dir, MacvlanConfig{Parent: "addr0", Subnet: netip.MustParsePrefix("10.78.1.0/24")})
		if _, err := other.Allocate(ctx, testIDs("c", 1)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("another subnet in use: %v, want ErrInvalidConfig", err)
		}
		same := newMacvlan(t, dir, MacvlanConfig{Parent: "addr0", Subnet: netip.MustParsePrefix("10.78.0.0/24")})
		eps2, err := same.Allocate(ctx, testIDs("c", 1))
		if err != nil {
			t.Fatal(err)
		}
		// Known only by container id (a crash before the record): freed.
		lost := []Endpoint{{Driver: DriverMacvlan, Parent: "addr0", ContainerID: eps2[0].ContainerID}}
		if err := same.Release(ctx, append(lost, eps...)); err != nil {
			t.Fatal(err)
		}
		assertMacvlanClean(t, dir, "addr0", netip.MustParsePrefix("10.78.0.0/24"))
		// A bridge endpoint is not this driver's.
		if err := m.Release(ctx, []Endpoint{{Network: "pirun0", ContainerID: ids[0]}}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("bridge endpoint: %v, want ErrInvalidConfig", err)
		}

		// A subnet overlapping another route of the host.
		if err := newMacvlan(t, dir, MacvlanConfig{Parent: "bare0", Subnet: netip.MustParsePrefix("10.78.0.0/16")}).Check(ctx, 1); !errors.Is(err, ErrSubnetOverlap) {
			t.Errorf("overlap: %v, want ErrSubnetOverlap", err)
		}
	})
}

func TestMacvlanSubnetFull(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		newParent(t, "lan0", "")
		subnet := netip.MustParsePrefix("10.77.0.0/29") // 6 hosts: gateway, host, 4 containers
		m := newMacvlan(t, dir, MacvlanConfig{Parent: "lan0", Subnet: subnet})
		if err := m.Check(ctx, 5); !errors.Is(err, ErrSubnetFull) {
			t.Errorf("Check 5: %v, want ErrSubnetFull", err)
		}
		if _, err := m.Allocate(ctx, testIDs("a", 5)); !errors.Is(err, ErrSubnetFull) {
			t.Errorf("Allocate 5: %v, want ErrSubnetFull", err)
		}
		assertMacvlanClean(t, dir, "lan0", subnet)
		eps, err := m.Allocate(ctx, testIDs("a", 4))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Allocate(ctx, testIDs("b", 1)); !errors.Is(err, ErrSubnetFull) {
			t.Errorf("one more: %v, want ErrSubnetFull", err)
		}
		if err := m.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		assertMacvlanClean(t, dir, "lan0", subnet)
	})
}

// A pirun that died half-way leaves a record and a host-side link without
// containers: the next Allocate removes them and starts afresh, and
// concurrent allocations never share an address.
func TestMacvlanCrashAndConcurrency(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		newParent(t, "lan0", "")
		subnet := netip.MustParsePrefix("10.77.0.0/22")
		m := newMacvlan(t, dir, MacvlanConfig{Parent: "lan0", Subnet: subnet})
		eps, err := m.Allocate(ctx, testIDs("a", 1))
		if err != nil {
			t.Fatal(err)
		}
		// The container's allocation vanishes (as if never made).
		if err := os.Remove(filepath.Join(dir, macvlanDir, "lan0", ipsDir, eps[0].Address.Addr().String())); err != nil {
			t.Fatal(err)
		}

		const workers, each = 4, 25
		// Each its own driver, hence its own lock file description; made
		// here, on the thread in the test namespace (other threads are in
		// the host's), and then used from any thread.
		drivers := make([]*Macvlan, workers)
		for w := range drivers {
			drivers[w] = newMacvlan(t, dir, MacvlanConfig{Parent: "lan0", Subnet: subnet})
		}
		var wg sync.WaitGroup
		got := make([][]Endpoint, workers)
		errs := make([]error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[w], errs[w] = drivers[w].Allocate(ctx, testIDs(fmt.Sprintf("w%d", w), each))
			}()
		}
		wg.Wait()
		seen := map[netip.Addr]bool{}
		var all []Endpoint
		for w := range workers {
			if errs[w] != nil {
				t.Fatalf("worker %d: %v", w, errs[w])
			}
			for _, ep := range got[w] {
				if seen[ep.Address.Addr()] {
					t.Errorf("address %s given twice", ep.Address)
				}
				seen[ep.Address.Addr()] = true
				all = append(all, ep)
			}
		}
		if err := m.Release(ctx, all); err != nil {
			t.Fatal(err)
		}
		assertMacvlanClean(t, dir, "lan0", subnet)

		// A link of the recorded name that is not the one recorded (state
		// removed from another namespace, where the name is someone
		// else's) is left alone.
		eps, err = m.Allocate(ctx, testIDs("z", 1))
		if err != nil {
			t.Fatal(err)
		}
		other := newParent(t, "other0", "")
		hostIf := eps[0].HostIf
		if err := netlink.LinkDel(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: hostIf}}); err != nil {
			t.Fatal(err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.ParentIndex = hostIf, other.Attrs().Index
		if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatal(err)
		}
		if err := m.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(hostIf); err != nil {
			t.Errorf("someone else's %s was deleted", hostIf)
		}
		netlink.LinkDel(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: hostIf}})
		assertMacvlanClean(t, dir, "lan0", subnet)
	})
}

// A restarted container gets its address's MAC back, so the host reaches
// it at once with the neighbour entry it has; its previous link, in a
// namespace the kernel is still tearing down, is waited for.
func TestMacvlanRestart(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		subnet := netip.MustParsePrefix("10.77.0.0/24")
		newParent(t, "lan0", "")
		m := newMacvlan(t, dir, MacvlanConfig{Parent: "lan0", Subnet: subnet})
		eps, err := m.Allocate(ctx, testIDs("a", 1))
		if err != nil {
			t.Fatal(err)
		}
		ep := eps[0]
		attach := func() netns.NsHandle {
			t.Helper()
			ns, path := newNS(t)
			if err := m.Attach(ctx, ep, path); err != nil {
				ns.Close()
				t.Fatalf("Attach: %v", err)
			}
			return ns
		}
		ns1 := attach()
		mustReach(t, 0, ns1, ep.Address.Addr(), "host to the container")
		h, err := netlink.NewHandleAt(ns1)
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := h.LinkByName("eth0")
		h.Close()
		if err != nil || eth0.Attrs().HardwareAddr.String() != "02:70:0a:4d:00:03" {
			t.Errorf("eth0 MAC %v (%v), want 02:70:0a:4d:00:03", eth0, err)
		}
		// Still up elsewhere: refused after a bounded wait.
		ns2, path2 := newNS(t)
		start := time.Now()
		if err := m.Attach(ctx, ep, path2); !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("Attach while the previous link is up: %v, want EADDRINUSE", err)
		}
		if d := time.Since(start); d > upWait+time.Second {
			t.Errorf("Attach waited %s", d)
		}
		ns2.Close()
		// The container dies (its namespace with it), and starts again.
		ns1.Close()
		ns3 := attach()
		defer ns3.Close()
		if err := dialFrom(t, 0, serveOnce(t, ns3, ep.Address.Addr()), 2*time.Second); err != nil {
			t.Errorf("host to the restarted container: %v", err)
		}
		if err := m.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		assertMacvlanClean(t, dir, "lan0", subnet)
	})
}
