package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/pirun/pirun/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The re-executed test binary allocates addresses and prints them.
const childEnv = "PIRUN_NETWORK_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(childAllocate(dir, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

func childAllocate(dir, prefix string) int {
	b, err := NewBridge(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer b.Close()
	eps, err := b.Allocate(context.Background(), testIDs(prefix, 10))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(eps); err != nil {
		return 1
	}
	return 0
}

// inTestNS runs f on this goroutine's thread, locked into a fresh network
// namespace, and restores the thread's namespace on every path.
func inTestNS(t *testing.T, f func(host netns.NsHandle)) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "iptables")
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	defer func() {
		ns.Close()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with the goroutine.
			t.Errorf("restore netns: %v", err)
			orig.Close()
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	f(ns)
}

// newNS makes a "container" namespace without leaving the current one.
func newNS(t *testing.T) (netns.NsHandle, string) {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(cur); err != nil {
		t.Fatalf("back to the test netns: %v", err)
	}
	return ns, fmt.Sprintf("/proc/self/fd/%d", int(ns))
}

// doIn runs f with the (locked) current thread in ns.
func doIn(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(cur); err != nil {
			panic("cannot return to the test netns: " + err.Error())
		}
	}()
	f()
}

func testIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		head := fmt.Sprintf("%s%0*x", prefix, 10-len(prefix), i)
		ids[i] = head + strings.Repeat("f", 64-len(head))
	}
	return ids
}

func newBridge(t *testing.T, dir string, opts ...Option) *Bridge {
	t.Helper()
	b, err := NewBridge(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func allocations(t *testing.T, dir, name string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, name, ipsDir))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// iptablesState returns PIRUN-FORWARD's rules (nil if absent) and whether
// FORWARD jumps to it, in the current thread's namespace.
func iptablesState(t *testing.T) (rules []string, jump bool) {
	t.Helper()
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := ipt.ChainExists("filter", forwardChain); err != nil {
		t.Fatal(err)
	} else if ok {
		if rules, err = ipt.List("filter", forwardChain); err != nil {
			t.Fatal(err)
		}
	}
	fwd, err := ipt.List("filter", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range fwd {
		if r == "-A FORWARD -j "+forwardChain {
			n++
		}
	}
	if n > 1 {
		t.Errorf("FORWARD jumps %d times to %s", n, forwardChain)
	}
	return rules, n == 1
}

// assertClean checks that nothing of the network is left.
func assertClean(t *testing.T, dir, name string) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; n == name || strings.HasPrefix(n, name+"-") || strings.HasPrefix(n, "pr") {
			t.Errorf("link %s left behind", n)
		}
	}
	if rules, jump := iptablesState(t); rules != nil || jump {
		t.Errorf("iptables left behind: chain %v, jump %v", rules, jump)
	}
	if a := allocations(t, dir, name); len(a) != 0 {
		t.Errorf("allocations left behind: %v", a)
	}
	for _, f := range []string{hintFile, sysctlFile} {
		if _, err := os.Stat(filepath.Join(dir, name, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

func TestAllocateReleaseRoundTrip(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)
		ids := testIDs("a", 3)
		eps, err := b.Allocate(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		for i, ep := range eps {
			want := Endpoint{
				Network:     "pirun0",
				ContainerID: ids[i],
				Address:     netip.MustParsePrefix(fmt.Sprintf("10.123.0.%d/22", i+2)),
				Gateway:     netip.MustParseAddr("10.123.0.1"),
				HostIf:      "pr" + ids[i][:10],
			}
			if ep != want {
				t.Errorf("endpoint %d = %+v, want %+v", i, ep, want)
			}
			data, err := os.ReadFile(filepath.Join(dir, "pirun0", ipsDir, ep.Address.Addr().String()))
			if err != nil || string(data) != ids[i] {
				t.Errorf("allocation file of %s: %q, %v", ep.Address, data, err)
			}
		}
		br, err := netlink.LinkByName("pirun0")
		if err != nil {
			t.Fatal(err)
		}
		if br.Attrs().Flags&net.FlagUp == 0 {
			t.Error("bridge is down")
		}
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.123.0.1/22" {
			t.Errorf("bridge addresses %v, want 10.123.0.1/22", addrs)
		}
		rules, jump := iptablesState(t)
		wantRules := []string{"-N PIRUN-FORWARD", "-A PIRUN-FORWARD -i pirun0 -j ACCEPT", "-A PIRUN-FORWARD -o pirun0 -j ACCEPT"}
		if !slices.Equal(rules, wantRules) || !jump {
			t.Errorf("iptables: %q, jump %v; want %q and a jump", rules, jump, wantRules)
		}

		// A second Bridge on the same state sees the allocations, and the
		// setup it verifies is not duplicated.
		b2 := newBridge(t, dir)
		eps2, err := b2.Allocate(ctx, testIDs("b", 1))
		if err != nil {
			t.Fatal(err)
		}
		if got := eps2[0].Address.String(); got != "10.123.0.5/22" {
			t.Errorf("second Bridge allocated %s, want 10.123.0.5/22", got)
		}
		if rules2, _ := iptablesState(t); !slices.Equal(rules2, wantRules) {
			t.Errorf("iptables after second Allocate: %q", rules2)
		}

		// Releasing some keeps the network.
		if err := b2.Release(ctx, eps[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("pirun0"); err != nil {
			t.Errorf("bridge gone while addresses remain: %v", err)
		}
		// Releasing an address now owned by someone else leaves it alone.
		stale := eps[1]
		stale.ContainerID = testIDs("c", 1)[0]
		if err := b.Release(ctx, []Endpoint{stale}); err != nil {
			t.Fatal(err)
		}
		if got := len(allocations(t, dir, "pirun0")); got != 3 {
			t.Errorf("%d allocations after a stale release, want 3", got)
		}

		all := append(eps, eps2...)
		if err := b.Release(ctx, all); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
		if err := b.Release(ctx, all); err != nil {
			t.Errorf("second Release: %v", err)
		}
		assertClean(t, dir, "pirun0")
	})
}

func TestAllocateSubnetFull(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir, WithBridgeName("prtest0"), WithSubnet(netip.MustParsePrefix("10.200.0.0/29")))
		_, err := b.Allocate(ctx, testIDs("a", 6))
		if !errors.Is(err, ErrSubnetFull) || !strings.Contains(err.Error(), "10.200.0.0/29") {
			t.Fatalf("Allocate 6 in a /29: %v, want ErrSubnetFull naming the subnet", err)
		}
		if a := allocations(t, dir, "prtest0"); len(a) != 0 {
			t.Errorf("a failed Allocate reserved %v", a)
		}
		if _, err := netlink.LinkByName("prtest0"); err == nil {
			t.Error("a failed Allocate created the bridge")
		}
		eps, err := b.Allocate(ctx, testIDs("b", 5))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Allocate(ctx, testIDs("c", 1)); !errors.Is(err, ErrSubnetFull) {
			t.Errorf("Allocate in a full /29: %v, want ErrSubnetFull", err)
		}
		if err := b.Release(ctx, eps[2:3]); err != nil {
			t.Fatal(err)
		}
		// The freed address is found again after wrapping around.
		eps2, err := b.Allocate(ctx, testIDs("d", 1))
		if err != nil {
			t.Fatal(err)
		}
		if eps2[0].Address != eps[2].Address {
			t.Errorf("reallocated %s, want the freed %s", eps2[0].Address, eps[2].Address)
		}
		if err := b.Release(ctx, append(eps, eps2...)); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "prtest0")
	})
}

// TestAllocateAcrossBridges fills the first slice's bridge and goes on to
// the next one, which has its own gateway and rules and is reached from the
// host by its own route; the last release on a bridge removes it.
func TestAllocateAcrossBridges(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)
		if b.Capacity() != 64*1021 {
			t.Errorf("capacity %d, want 64 bridges of 1021", b.Capacity())
		}
		eps, err := b.Allocate(ctx, testIDs("a", 1021+5))
		if err != nil {
			t.Fatal(err)
		}
		first, second := eps[:1021], eps[1021:]
		if last := first[len(first)-1]; last.Network != "pirun0" || last.Address.String() != "10.123.3.254/22" || last.Gateway.String() != "10.123.0.1" {
			t.Errorf("last endpoint of the first bridge: %+v", last)
		}
		if ep := second[0]; ep.Network != "pirun0-1" || ep.Address.String() != "10.123.4.2/22" || ep.Gateway.String() != "10.123.4.1" {
			t.Errorf("first endpoint of the second bridge: %+v", ep)
		}
		br1, err := netlink.LinkByName("pirun0-1")
		if err != nil {
			t.Fatal(err)
		}
		if addrs, _ := netlink.AddrList(br1, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != "10.123.4.1/22" {
			t.Errorf("pirun0-1 addresses %v, want 10.123.4.1/22", addrs)
		}
		rules, jump := iptablesState(t)
		want := []string{"-N PIRUN-FORWARD",
			"-A PIRUN-FORWARD -i pirun0 -j ACCEPT", "-A PIRUN-FORWARD -o pirun0 -j ACCEPT",
			"-A PIRUN-FORWARD -i pirun0-1 -j ACCEPT", "-A PIRUN-FORWARD -o pirun0-1 -j ACCEPT"}
		if !slices.Equal(rules, want) || !jump {
			t.Errorf("iptables %q, jump %v; want %q", rules, jump, want)
		}
		// One container on each bridge, both reached from the host.
		for _, ep := range []Endpoint{first[7], second[3]} {
			ns, path := newNS(t)
			defer ns.Close()
			if err := b.Attach(ctx, ep, path); err != nil {
				t.Fatal(err)
			}
			mustReach(t, 0, ns, ep.Address.Addr(), "host to "+ep.Address.String()+" on "+ep.Network)
		}
		// A full subnet is refused before anything is reserved.
		if _, err := b.Allocate(ctx, testIDs("b", b.Capacity())); !errors.Is(err, ErrSubnetFull) || !strings.Contains(err.Error(), "64 bridges of 1021") {
			t.Errorf("Allocate past the subnet: %v, want ErrSubnetFull explaining the bridges", err)
		}
		if err := b.Check(ctx, b.Capacity()-len(eps)+1); !errors.Is(err, ErrSubnetFull) {
			t.Errorf("Check one too many: %v, want ErrSubnetFull", err)
		}
		if err := b.Check(ctx, b.Capacity()-len(eps)); err != nil {
			t.Errorf("Check exactly the free room: %v", err)
		}
		if got := len(allocations(t, dir, "pirun0")); got != len(eps) {
			t.Errorf("%d allocations, want %d", got, len(eps))
		}

		// The last release on the second bridge removes it and its rules.
		if err := b.Release(ctx, second); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("pirun0-1"); err == nil {
			t.Error("pirun0-1 left after its last release")
		}
		if _, err := netlink.LinkByName("pirun0"); err != nil {
			t.Errorf("pirun0 gone while it has containers: %v", err)
		}
		if rules, _ := iptablesState(t); !slices.Equal(rules, want[:3]) {
			t.Errorf("iptables after pirun0-1 went: %q", rules)
		}
		if err := b.Release(ctx, first); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
	})
}

// Records written before subnets had slices (address /16 outside the first
// /22, the bridge holding 10.123.0.1/16) are still released, and the old bridge is
// refused with a clear error rather than mixed with the new layout.
func TestLegacyEndpoint(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)
		id := testIDs("l", 1)[0]
		if err := os.MkdirAll(filepath.Join(dir, "pirun0", ipsDir), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "pirun0", ipsDir, "10.123.5.7"), []byte(id), 0o600); err != nil {
			t.Fatal(err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "pirun0"
		old := &netlink.Bridge{LinkAttrs: attrs}
		if err := netlink.LinkAdd(old); err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(old, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.123.0.1/16"))}); err != nil {
			t.Fatal(err)
		}
		netlink.LinkSetUp(old)
		if err := b.ensureIptables([]string{"pirun0"}); err != nil {
			t.Fatal(err)
		}
		var ep Endpoint
		legacy := `{"network":"pirun0","container_id":"` + id + `","address":"10.123.5.7/16","gateway":"10.123.0.1","host_if":"pr` + id[:10] + `"}`
		if err := json.Unmarshal([]byte(legacy), &ep); err != nil {
			t.Fatal(err)
		}

		_, err := b.Allocate(ctx, testIDs("n", 1))
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "before bridges had slices") {
			t.Errorf("Allocate next to an old bridge: %v, want ErrInvalidConfig explaining it", err)
		}
		if got := allocations(t, dir, "pirun0"); len(got) != 1 {
			t.Errorf("allocations after the refused Allocate: %v", got)
		}
		if rules, jump := iptablesState(t); len(rules) != 3 || !jump {
			t.Errorf("the refused Allocate touched the old rules: %q, %v", rules, jump)
		}
		if err := b.Release(ctx, []Endpoint{ep}); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
	})
}

func TestAllocateRefusesOverlap(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "other0" // a bridge: this kernel has no dummy driver
		d := &netlink.Bridge{LinkAttrs: attrs}
		if err := netlink.LinkAdd(d); err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(d, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.123.7.1/24"))}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(d); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		b := newBridge(t, dir)
		_, err := b.Allocate(ctx, testIDs("a", 1))
		if !errors.Is(err, ErrSubnetOverlap) || !strings.Contains(err.Error(), "10.123.7.0/24") {
			t.Fatalf("Allocate: %v, want ErrSubnetOverlap naming the route", err)
		}
		if a := allocations(t, dir, "pirun0"); len(a) != 0 {
			t.Errorf("reserved %v", a)
		}
		// A subnet that does not overlap works, and its own route is no
		// overlap on the next Allocate.
		b2 := newBridge(t, dir, WithBridgeName("pirun1"), WithSubnet(netip.MustParsePrefix("10.124.0.0/16")))
		eps, err := b2.Allocate(ctx, testIDs("b", 1))
		if err != nil {
			t.Fatal(err)
		}
		eps2, err := b2.Allocate(ctx, testIDs("c", 1))
		if err != nil {
			t.Fatalf("second Allocate on an existing bridge: %v", err)
		}
		if err := b2.Release(ctx, append(eps, eps2...)); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun1")
	})
}

func TestConcurrentAllocate(t *testing.T) {
	inTestNS(t, func(host netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		const workers, each = 4, 10
		bridges := make([]*Bridge, workers)
		for i := range bridges {
			bridges[i] = newBridge(t, dir)
		}
		results := make([][]Endpoint, workers)
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for i := range workers {
			wg.Go(func() {
				// Each caller sits in a namespace of its own, as the runtime
				// does: the Bridge must still work in its host namespace.
				runtime.LockOSThread()
				if _, err := netns.New(); err != nil {
					errs[i] = err
					return // the thread stays locked and is discarded
				}
				results[i], errs[i] = bridges[i].Allocate(ctx, testIDs(strconv.Itoa(i), each))
			})
		}
		wg.Wait()

		// And 4 processes, started from this thread, so in this namespace.
		type proc struct {
			cmd *exec.Cmd
			out strings.Builder
		}
		var procs []*proc
		for i := range workers {
			p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$", "p"+strconv.Itoa(i))}
			p.cmd.Env = append(os.Environ(), childEnv+"="+dir)
			p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
			if err := p.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			procs = append(procs, p)
		}
		for i, p := range procs {
			if err := p.cmd.Wait(); err != nil {
				t.Fatalf("child %d: %v: %s", i, err, p.out.String())
			}
			var eps []Endpoint
			if err := json.Unmarshal([]byte(p.out.String()), &eps); err != nil {
				t.Fatalf("child %d: %v: %s", i, err, p.out.String())
			}
			results = append(results, eps)
		}

		seen := map[netip.Addr]string{}
		var all []Endpoint
		for i, eps := range results {
			if i < workers && errs[i] != nil {
				t.Fatalf("worker %d: %v", i, errs[i])
			}
			if len(eps) != each {
				t.Fatalf("worker %d got %d endpoints", i, len(eps))
			}
			for _, ep := range eps {
				if other, ok := seen[ep.Address.Addr()]; ok {
					t.Errorf("%s given to %s and %s", ep.Address, other, ep.ContainerID)
				}
				seen[ep.Address.Addr()] = ep.ContainerID
				all = append(all, ep)
			}
		}
		if got := len(allocations(t, dir, "pirun0")); got != 2*workers*each {
			t.Errorf("%d allocation files, want %d", got, 2*workers*each)
		}
		if rules, jump := iptablesState(t); len(rules) != 3 || !jump {
			t.Errorf("iptables in the host namespace: %q, jump %v", rules, jump)
		}
		if err := bridges[0].Release(ctx, all); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
	})
}

// serveOnce listens on addr:0 inside ns and answers one connection with
// "pirun".
func serveOnce(t *testing.T, ns netns.NsHandle, addr netip.Addr) string {
	t.Helper()
	var ln net.Listener
	doIn(t, ns, func() {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String()); err != nil {
			t.Fatal(err)
		}
	})
	go func() {
		defer ln.Close()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("pirun"))
		c.Close()
	}()
	return ln.Addr().String()
}

// dialFrom connects from ns (the current thread's when 0) to addr.
func dialFrom(t *testing.T, ns netns.NsHandle, addr string, timeout time.Duration) error {
	t.Helper()
	var (
		c   net.Conn
		err error
	)
	dial := func() { c, err = net.DialTimeout("tcp", addr, timeout) }
	if ns == 0 {
		dial()
	} else {
		doIn(t, ns, dial)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != "pirun" {
		return fmt.Errorf("read %q", got)
	}
	return nil
}

func mustReach(t *testing.T, from, to netns.NsHandle, addr netip.Addr, what string) {
	t.Helper()
	if err := dialFrom(t, from, serveOnce(t, to, addr), 5*time.Second); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func TestAttachConnectivity(t *testing.T) {
	inTestNS(t, func(host netns.NsHandle) {
		ctx := context.Background()
		ipt, err := iptables.New()
		if err != nil {
			t.Fatal(err)
		}
		// As Docker does; only in this test's namespace.
		if err := ipt.ChangePolicy("filter", "FORWARD", "DROP"); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		b := newBridge(t, dir)
		ids := testIDs("a", 2)
		eps, err := b.Allocate(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		var cns [2]netns.NsHandle
		for i := range cns {
			ns, path := newNS(t)
			defer ns.Close()
			cns[i] = ns
			// Attach from a thread sitting in yet another namespace.
			errc := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				if _, err := netns.New(); err != nil {
					errc <- err
					return
				}
				errc <- b.Attach(ctx, eps[i], path)
			}()
			if err := <-errc; err != nil {
				t.Fatalf("Attach %d: %v", i, err)
			}
		}

		// Inside a container: lo and eth0 up, the address, the default route.
		h, err := netlink.NewHandleAt(cns[0])
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		for _, name := range []string{"lo", "eth0"} {
			l, err := h.LinkByName(name)
			if err != nil || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s in the container: %v, %v", name, l, err)
			}
		}
		eth0, _ := h.LinkByName("eth0")
		addrs, _ := h.AddrList(eth0, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != eps[0].Address.String() {
			t.Errorf("container addresses %v, want %s", addrs, eps[0].Address)
		}
		// IPv4 only: no IPv6 link-local on either end (its probes and
		// reports would flood the bridge).
		if v6, _ := h.AddrList(eth0, netlink.FAMILY_V6); len(v6) != 0 {
			t.Errorf("eth0 has IPv6 addresses %v", v6)
		}
		if hv, err := netlink.LinkByName(eps[0].HostIf); err == nil {
			if v6, _ := netlink.AddrList(hv, netlink.FAMILY_V6); len(v6) != 0 {
				t.Errorf("%s has IPv6 addresses %v", eps[0].HostIf, v6)
			}
			// Nor IPv6 at all on the host side: no route per port in the
			// host's IPv6 table.
			if v, err := readSysctl("/proc/sys", "net/ipv6/conf/"+eps[0].HostIf+"/disable_ipv6"); err == nil && v != 1 {
				t.Errorf("%s: disable_ipv6 = %d, want 1", eps[0].HostIf, v)
			}
			if rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: hv.Attrs().Index, Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE); len(rs) != 0 {
				t.Errorf("%s has IPv6 routes %v", eps[0].HostIf, rs)
			}
		}
		routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified()
			return isDefault && r.Gw.Equal(eps[0].Gateway.AsSlice())
		}) {
			t.Errorf("no default route via %s in %v", eps[0].Gateway, routes)
		}
		hostIf, err := netlink.LinkByName(eps[0].HostIf)
		if err != nil {
			t.Fatal(err)
		}
		br, _ := netlink.LinkByName("pirun0")
		if hostIf.Attrs().MasterIndex != br.Attrs().Index || hostIf.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("host veth %s: master %d (bridge %d), flags %v", eps[0].HostIf, hostIf.Attrs().MasterIndex, br.Attrs().Index, hostIf.Attrs().Flags)
		}

		c0, c1 := eps[0].Address.Addr(), eps[1].Address.Addr()
		mustReach(t, 0, cns[0], c0, "host to container 0")
		mustReach(t, 0, cns[1], c1, "host to container 1")
		mustReach(t, cns[0], cns[1], c1, "container 0 to container 1")
		mustReach(t, cns[1], cns[0], c0, "container 1 to container 0")
		mustReach(t, cns[0], host, eps[0].Gateway, "container 0 to the gateway")

		// Routed traffic through FORWARD (policy DROP): from an "outside"
		// namespace linked to this one, with forwarding on in this one only.
		out, _ := newNS(t)
		defer out.Close()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "out0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(out))}); err != nil {
			t.Fatal(err)
		}
		o, _ := netlink.LinkByName("out0")
		netlink.AddrAdd(o, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.168.77.1/24"))})
		netlink.LinkSetUp(o)
		ho, err := netlink.NewHandleAt(out)
		if err != nil {
			t.Fatal(err)
		}
		defer ho.Close()
		oe, _ := ho.LinkByName("eth0")
		ho.AddrAdd(oe, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.168.77.2/24"))})
		ho.LinkSetUp(oe)
		if err := ho.RouteAdd(&netlink.Route{LinkIndex: oe.Attrs().Index, Gw: net.ParseIP("192.168.77.1")}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Fatal(err) // this thread is in the test namespace: only its own
		}
		mustReach(t, out, cns[0], c0, "routed, outside to container 0")
		// The control: without pirun's jump, DROP wins.
		if err := ipt.Delete("filter", "FORWARD", jumpRule...); err != nil {
			t.Fatal(err)
		}
		if err := dialFrom(t, out, serveOnce(t, cns[0], c0), 300*time.Millisecond); err == nil {
			t.Error("routed traffic passed without pirun's rules: the test proves nothing")
		}
		if err := ipt.Insert("filter", "FORWARD", 1, jumpRule...); err != nil {
			t.Fatal(err)
		}

		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
		if err := b.Release(ctx, eps); err != nil {
			t.Errorf("second Release: %v", err)
		}
	})
}

func TestAttachFailureDeletesVeth(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)
		eps, err := b.Allocate(ctx, testIDs("a", 1))
		if err != nil {
			t.Fatal(err)
		}
		ns, path := newNS(t)
		defer ns.Close()
		bad := eps[0]
		bad.Gateway = netip.MustParseAddr("192.0.2.1") // not on eth0's subnet: the route fails
		if err := b.Attach(ctx, bad, path); err == nil {
			t.Fatal("Attach with an unreachable gateway succeeded")
		}
		if _, err := netlink.LinkByName(eps[0].HostIf); err == nil {
			t.Error("veth left after a failed Attach")
		}
		if err := b.Attach(ctx, eps[0], path); err != nil {
			t.Fatalf("Attach after a failed one: %v", err)
		}
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
	})
}

func TestSetupLoopback(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ns, path := newNS(t)
		defer ns.Close()
		if err := SetupLoopback(path); err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("lo: %v, %v", lo, err)
		}
		links, _ := h.LinkList()
		if len(links) != 1 {
			t.Errorf("links %d, want lo only", len(links))
		}
	})
}

// TestNeighRaiseRestore runs the real Allocate/Release path against a fake
// /proc/sys tree, so the global thresholds and backlog are never touched.
func TestNeighRaiseRestore(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		fake := t.TempDir()
		set := func(v [3]int) {
			for i, k := range neighKeys {
				os.MkdirAll(filepath.Dir(filepath.Join(fake, k)), 0o755)
				if err := writeSysctl(fake, k, v[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
		get := func() (v [3]int) {
			for i, k := range neighKeys {
				var err error
				if v[i], err = readSysctl(fake, k); err != nil {
					t.Fatal(err)
				}
			}
			return v
		}
		set([3]int{128, 512, 1024})
		os.MkdirAll(filepath.Dir(filepath.Join(fake, backlogKey)), 0o755)
		writeSysctl(fake, backlogKey, 1000)
		backlog := func() int { v, _ := readSysctl(fake, backlogKey); return v }
		dir := t.TempDir()
		b := newBridge(t, dir, func(o *options) { o.sysctlDir = fake })
		small, err := b.Allocate(ctx, testIDs("a", 10))
		if err != nil {
			t.Fatal(err)
		}
		if got := get(); got != [3]int{128, 512, 1024} || backlog() != 1000 {
			t.Errorf("10 allocations raised the thresholds to %v, the backlog to %d", got, backlog())
		}
		big, err := b.Allocate(ctx, testIDs("b", 490))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := get(), neighWant([3]int{128, 512, 1024}, 500); got != want || got[2] != 1256 {
			t.Errorf("thresholds after 500 allocations %v, want %v", got, want)
		}
		more, err := b.Allocate(ctx, testIDs("c", 100))
		if err != nil {
			t.Fatal(err)
		}
		if got := get(); got[2] != 1456 || backlog() != 1800 {
			t.Errorf("thresholds after 600 allocations on one bridge %v, backlog %d, want 1800", got, backlog())
		}
		rec, _ := b.readSysctlRecord()
		if rec[neighKeys[2]].Original != 1024 || rec[neighKeys[1]].Original != 512 {
			t.Errorf("record %v lost the original values", rec)
		}
		if err := b.Release(ctx, slices.Concat(small, big, more)); err != nil {
			t.Fatal(err)
		}
		if got := get(); got != [3]int{128, 512, 1024} || backlog() != 1000 {
			t.Errorf("thresholds after release %v, backlog %d, want the originals", got, backlog())
		}
		assertClean(t, dir, "pirun0")

		// A value someone else changed meanwhile is left alone.
		eps, err := b.Allocate(ctx, testIDs("d", 500))
		if err != nil {
			t.Fatal(err)
		}
		writeSysctl(fake, neighKeys[2], 9999)
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
		if got := get(); got != [3]int{128, 512, 9999} {
			t.Errorf("thresholds %v, want thresh2 restored and thresh3 left at 9999", got)
		}
	})
}

// TestNeighHostSysctl raises the real, global thresholds by at most 2 and
// restores them. It touches the host, so it runs only when asked to.
func TestNeighHostSysctl(t *testing.T) {
	testutil.RequiresRoot(t)
	if os.Getenv("PIRUN_TEST_HOST_SYSCTL") != "1" {
		t.Skip("skipping: changes global sysctls for a moment; set PIRUN_TEST_HOST_SYSCTL=1")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var orig [3]int
	for i, k := range neighKeys {
		v, err := readSysctl("/proc/sys", k)
		if err != nil {
			t.Skipf("skipping: %s not visible (not the initial network namespace?): %v", k, err)
		}
		orig[i] = v
	}
	t.Cleanup(func() {
		for i, k := range neighKeys {
			if err := writeSysctl("/proc/sys", k, orig[i]); err != nil {
				t.Errorf("restore %s to %d: %v", k, orig[i], err)
			}
		}
	})
	// NewBridge creates nothing on the host; only the sysctl code runs.
	b := newBridge(t, t.TempDir())
	n := (orig[2]+2-256+1)/2 + 0
	if err := b.raiseSysctls(n, 1); err != nil {
		t.Fatal(err)
	}
	v, _ := readSysctl("/proc/sys", neighKeys[2])
	if v <= orig[2] || v > orig[2]+3 {
		t.Errorf("gc_thresh3 %d after raising from %d", v, orig[2])
	}
	if err := b.restoreSysctls(); err != nil {
		t.Fatal(err)
	}
	for i, k := range neighKeys {
		if v, _ := readSysctl("/proc/sys", k); v != orig[i] {
			t.Errorf("%s = %d after restore, want %d", k, v, orig[i])
		}
	}
}

func TestAllocateRollsBack(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)

		// No iptables binary: a clear error before anything is reserved.
		path := os.Getenv("PATH")
		t.Setenv("PATH", t.TempDir())
		_, err := b.Allocate(ctx, testIDs("a", 2))
		if err == nil || !strings.Contains(err.Error(), "iptables binary is not installed") {
			t.Errorf("Allocate without iptables: %v", err)
		}
		if a := allocations(t, dir, "pirun0"); len(a) != 0 {
			t.Errorf("reserved %v", a)
		}
		t.Setenv("PATH", path)

		// A link that is not a bridge holds the name: Allocate fails after
		// reserving, and gives everything back; the link is not its to delete.
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "pirun0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "peer0"}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Allocate(ctx, testIDs("b", 2)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Allocate over a veth named pirun0: %v, want ErrInvalidConfig", err)
		}
		if a := allocations(t, dir, "pirun0"); len(a) != 0 {
			t.Errorf("reserved %v after a failed Allocate", a)
		}
		if rules, jump := iptablesState(t); rules != nil || jump {
			t.Errorf("iptables left after a failed Allocate: %q, %v", rules, jump)
		}
		if _, err := netlink.LinkByName("pirun0"); err != nil {
			t.Errorf("the foreign link was deleted: %v", err)
		}
	})
}

// A container known only by its id (pirun died between reserving its
// address and recording it) still gets its address freed.
func TestReleaseByContainerID(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir)
		ids := testIDs("c", 3)
		if _, err := b.Allocate(ctx, ids); err != nil {
			t.Fatal(err)
		}
		if err := b.Release(ctx, []Endpoint{{ContainerID: ids[1]}}); err != nil {
			t.Fatal(err)
		}
		if got := allocations(t, dir, "pirun0"); len(got) != 2 {
			t.Errorf("after releasing one by id: %d allocations, want 2", len(got))
		}
		if err := b.Release(ctx, []Endpoint{{ContainerID: ids[0]}, {ContainerID: ids[2]}}); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, "pirun0")
	})
}

// Networks share PIRUN-FORWARD, each under its own lock: while one deletes
// the chain (its last container went) another fills it. After every
// Allocate, the network's rules and the jump are in place; at the end,
// nothing is left.
func TestConcurrentNetworksShareChain(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dirs := []string{t.TempDir(), t.TempDir()}
		nets := []*Bridge{
			newBridge(t, dirs[0], WithBridgeName("pra"), WithSubnet(netip.MustParsePrefix("10.201.0.0/24"))),
			newBridge(t, dirs[1], WithBridgeName("prb"), WithSubnet(netip.MustParsePrefix("10.202.0.0/24"))),
		}
		errs := make([]error, len(nets))
		var wg sync.WaitGroup
		for i, b := range nets {
			wg.Go(func() {
				for c := range 12 {
					eps, err := b.Allocate(ctx, testIDs(fmt.Sprintf("%d%x", i, c), 1))
					if err != nil {
						errs[i] = err
						return
					}
					var jump bool
					rules, _, err := b.ourRules()
					if err == nil {
						err = b.inHost(func() error {
							ipt, err := b.iptablesHandle()
							if err == nil {
								jump, err = ipt.Exists("filter", "FORWARD", jumpRule...)
							}
							return err
						})
					}
					if err != nil || len(rules) != 2 || !jump {
						errs[i] = fmt.Errorf("cycle %d: rules %q, jump %v, %v", c, rules, jump, err)
						return
					}
					if err := b.Release(ctx, eps); err != nil {
						errs[i] = err
						return
					}
				}
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("network %s: %v", nets[i].Name(), err)
			}
		}
		assertClean(t, dirs[0], "pra")
		assertClean(t, dirs[1], "prb")
	})
}
