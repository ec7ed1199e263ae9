package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestParsePortSpec(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		in   string
		want PortMapping
		err  string // a part of the error; "" for success
	}{
		{in: "8080:80", want: PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "8080:80/tcp", want: PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "5353:53/udp", want: PortMapping{HostPort: 5353, ContainerPort: 53, Protocol: "udp"}},
		{in: "127.0.0.1:8080:80", want: PortMapping{HostIP: lo, HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "127.0.0.1:8080:80/udp", want: PortMapping{HostIP: lo, HostPort: 8080, ContainerPort: 80, Protocol: "udp"}},
		{in: "0.0.0.0:8080:80", want: PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
		{in: "1:65535", want: PortMapping{HostPort: 1, ContainerPort: 65535, Protocol: "tcp"}},
		{in: "080:80", want: PortMapping{HostPort: 80, ContainerPort: 80, Protocol: "tcp"}},
		{in: "", err: "no host port"},
		{in: "80", err: "no host port"},
		{in: "80/tcp", err: "no host port"},
		{in: ":80", err: "host port: empty"},
		{in: "80:", err: "container port: empty"},
		{in: "0:80", err: "not a port number"},
		{in: "8080:0", err: "not a port number"},
		{in: "65536:80", err: "not a port number"},
		{in: "-1:80", err: "port ranges"},
		{in: "+80:80", err: "not a port number"},
		{in: "8080-8081:80-81", err: "port ranges"},
		{in: "8080:80/sctp", err: `protocol "sctp"`},
		{in: "8080:80/TCP", err: `protocol "TCP"`},
		{in: "8080:80/", err: `protocol ""`},
		{in: "localhost:8080:80", err: "not an IPv4 address"},
		{in: "1.2.3:8080:80", err: "not an IPv4 address"},
		{in: ":8080:80", err: "not an IPv4 address"},
		{in: "[::1]:8080:80", err: "IPv6"},
		{in: "::1:8080:80", err: "IPv6"},
		{in: "::ffff:127.0.0.1:8080:80", err: "IPv6"},
		{in: "1:2:3:4", err: "too many"},
		{in: "8080:80 ", err: "not a port number"},
	} {
		got, err := ParsePortSpec(tc.in)
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParsePortSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParsePortSpec(%q) = %+v, %v; want an ErrInvalidConfig mentioning %q", tc.in, got, err, tc.err)
		}
	}
}

func TestPortMappingString(t *testing.T) {
	p, _ := ParsePortSpec("127.0.0.1:8080:80")
	if s, h := p.String(), p.HostAddr(); s != "127.0.0.1:8080:80/tcp" || h != "127.0.0.1:8080/tcp" {
		t.Errorf("String %q, HostAddr %q", s, h)
	}
	p, _ = ParsePortSpec("0.0.0.0:53:53/udp")
	if s, h := p.String(), p.HostAddr(); s != "53:53/udp" || h != "0.0.0.0:53/udp" {
		t.Errorf("String %q, HostAddr %q", s, h)
	}
}

func TestCheckPortMappings(t *testing.T) {
	parse := func(specs ...string) []PortMapping {
		var ps []PortMapping
		for _, s := range specs {
			p, err := ParsePortSpec(s)
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, p)
		}
		return ps
	}
	for _, ok := range [][]string{
		{"8080:80", "8081:80"},
		{"8080:80", "8080:80/udp"},
		{"127.0.0.1:8080:80", "127.0.0.2:8080:80"},
	} {
		if err := CheckPortMappings(parse(ok...)); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range [][]string{
		{"8080:80", "8080:81"},
		{"8080:80", "127.0.0.1:8080:81"},
		{"127.0.0.1:8080:80", "127.0.0.1:8080:80"},
	} {
		if err := CheckPortMappings(parse(bad...)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%v: %v, want ErrInvalidConfig", bad, err)
		}
	}
	if err := CheckPortMappings([]PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "sctp"}}); err == nil {
		t.Error("protocol sctp accepted")
	}
	if err := CheckPortMappings([]PortMapping{{HostIP: netip.MustParseAddr("::1"), HostPort: 1, ContainerPort: 1, Protocol: "tcp"}}); err == nil {
		t.Error("an IPv6 host address accepted")
	}
}

// FuzzParsePortSpec: whatever it accepts is valid and prints back to
// itself. The seed corpus is in testdata/fuzz/FuzzParsePortSpec.
func FuzzParsePortSpec(f *testing.F) {
	for _, s := range []string{"8080:80", "127.0.0.1:8080:80/udp", "0.0.0.0:1:65535/tcp", "[::1]:80:80", "80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePortSpec(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParsePortSpec(%q): %v does not wrap ErrInvalidConfig", s, err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParsePortSpec(%q) = %+v, which is invalid: %v", s, p, err)
		}
		q, err := ParsePortSpec(p.String())
		if err != nil || q != p {
			t.Fatalf("ParsePortSpec(%q) = %+v, printed %q, parsed back as %+v, %v", s, p, p.String(), q, err)
		}
	})
}

func TestDNATSpecs(t *testing.T) {
	p := PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}
	var eps []Endpoint
	for i := range 3 {
		eps = append(eps, Endpoint{Address: netip.MustParsePrefix(fmt.Sprintf("10.1.0.%d/24", i+2))})
	}
	got := dnatSpecs(p, eps)
	want := []string{
		"-p tcp -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.1.0.2:80",
		"-p tcp -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.1.0.3:80",
		"-p tcp -j DNAT --to-destination 10.1.0.4:80",
	}
	for i := range want {
		if i >= len(got) || strings.Join(got[i], " ") != want[i] {
			t.Errorf("rules %q, want %q", got, want)
			break
		}
	}
	// What iptables -S prints of a dispatch rule reads back as the mapping.
	p.HostIP, p.ContainerPort = netip.MustParseAddr("127.0.0.1"), 0
	q, chain, ok := parseDispatch("-A PIRUN-PORTS -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j PIRUN-TCP8080-abcdef")
	if !ok || q != p || chain != "PIRUN-TCP8080-abcdef" {
		t.Errorf("parseDispatch: %+v %q %v", q, chain, ok)
	}
}

// replica is a fake container for the publishing tests: a namespace on
// the bridge with a TCP server on :80 and a UDP server on :53 that answer
// with the replica's name.
type replica struct {
	name string
	ep   Endpoint
	ns   netns.NsHandle
	tcp  net.Listener
	udp  net.PacketConn
}

func startReplicas(t *testing.T, b *Bridge, eps []Endpoint) []*replica {
	t.Helper()
	var rs []*replica
	t.Cleanup(func() {
		for _, r := range rs {
			r.tcp.Close()
			r.udp.Close()
			r.ns.Close()
		}
	})
	for i, ep := range eps {
		ns, path := newNS(t)
		if err := b.Attach(context.Background(), ep, path); err != nil {
			ns.Close()
			t.Fatal(err)
		}
		r := &replica{name: fmt.Sprintf("r%d", i), ep: ep, ns: ns}
		var err error
		doIn(t, ns, func() {
			if r.tcp, err = net.Listen("tcp4", ":80"); err != nil {
				return
			}
			if r.udp, err = net.ListenPacket("udp4", ":53"); err != nil {
				r.tcp.Close()
			}
		})
		if err != nil {
			ns.Close()
			t.Fatal(err)
		}
		rs = append(rs, r)
		go func() {
			for {
				c, err := r.tcp.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(r.name))
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := r.udp.ReadFrom(buf)
				if err != nil {
					return
				}
				r.udp.WriteTo([]byte(r.name), from)
			}
		}()
	}
	return rs
}

// ask makes one connection (one datagram for udp) to addr from the calling
// thread's namespace and returns the answer.
func ask(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("?")); err != nil {
			return "", err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// askOn sends one datagram on conn and returns the answer.
func askOn(conn *net.UDPConn) (string, error) {
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("?")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	return string(buf[:n]), err
}

// tally asks n times (a bounded loop) and counts the answers; a failure
// counts as "error".
func tally(network, addr string, n int) map[string]int {
	m := map[string]int{}
	for range n {
		s, err := ask(network, addr)
		if err != nil {
			s = "error"
		}
		m[s]++
	}
	return m
}

// pirunChains lists pirun's chains in the current namespace's table, but
// the bridge driver's own PIRUN-FORWARD.
func pirunChains(t *testing.T, table string) []string {
	t.Helper()
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := ipt.ListChains(table)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range chains {
		if strings.HasPrefix(c, "PIRUN-") && c != forwardChain {
			out = append(out, c)
		}
	}
	return out
}

func sysctlValue(t *testing.T, key string) int {
	t.Helper()
	v, err := readSysctl("/proc/sys", key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func loopbackUpHere(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// assertPortsClean checks that nothing of the published ports is left.
func assertPortsClean(t *testing.T, b *Bridge, bridges ...string) {
	t.Helper()
	for _, table := range []string{"nat", "filter"} {
		if c := pirunChains(t, table); len(c) > 0 {
			t.Errorf("chains left in %s: %v", table, c)
		}
	}
	for _, br := range bridges {
		for _, k := range []string{localnetKey(br), forwardingKey(br)} {
			if v, err := readSysctl("/proc/sys", k); err == nil && v != 0 {
				t.Errorf("%s = %d, want 0 restored", k, v)
			}
		}
	}
	ents, _ := os.ReadDir(b.portsDir())
	for _, e := range ents {
		if e.Name() != lockFile {
			t.Errorf("%s left in %s", e.Name(), b.portsDir())
		}
	}
}

func mustParsePorts(t *testing.T, specs ...string) []PortMapping {
	t.Helper()
	var ps []PortMapping
	for _, s := range specs {
		p, err := ParsePortSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestPublish(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		loopbackUpHere(t)
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir, WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
		ids := testIDs("p", 4)
		eps, err := b.Allocate(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		rs := startReplicas(t, b, eps)
		ports := mustParsePorts(t, "127.0.0.1:8080:80", "8081:80", "127.0.0.1:5353:53/udp")
		if err := b.CheckPorts(ctx, ports); err != nil {
			t.Fatalf("CheckPorts before publishing: %v", err)
		}
		if err := b.Publish(ctx, ports, eps); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{localnetKey("prport0"), forwardingKey("prport0")} {
			if v := sysctlValue(t, k); v != 1 {
				t.Errorf("%s = %d after publishing, want 1", k, v)
			}
		}

		// Every connection succeeds, and the split is exact.
		want := map[string]int{"r0": 10, "r1": 10, "r2": 10, "r3": 10}
		for _, tc := range []struct{ network, addr string }{
			{"tcp4", "127.0.0.1:8080"}, {"tcp4", "127.0.0.2:8081"}, {"tcp4", "10.210.0.1:8081"}, {"udp4", "127.0.0.1:5353"},
		} {
			if got := tally(tc.network, tc.addr, 40); !mapsEqual(got, want) {
				t.Errorf("40 requests to %s %s: %v, want %v", tc.network, tc.addr, got, want)
			}
		}
		// A port published on 127.0.0.1 only is not published elsewhere.
		if _, err := ask("tcp4", "10.210.0.1:8080"); err == nil {
			t.Error("127.0.0.1:8080 answers at the bridge's address too")
		}
		// Hairpin: a container reaches the port published on every address,
		// itself included.
		doIn(t, rs[0].ns, func() {
			if got := tally("tcp4", "10.210.0.1:8081", 8); !mapsEqual(got, map[string]int{"r0": 2, "r1": 2, "r2": 2, "r3": 2}) {
				t.Errorf("8 requests from r0 to its published port: %v", got)
			}
		})

		// In use: by pirun, and by a socket of the host.
		for _, spec := range []string{"8080:80", "127.0.0.1:8080:81", "127.0.0.1:5353:53/udp"} {
			err := b.Publish(ctx, mustParsePorts(t, spec), eps)
			if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "published by pirun") {
				t.Errorf("publish %s again: %v, want ErrPortInUse naming pirun", spec, err)
			}
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:9090")
		if err != nil {
			t.Fatal(err)
		}
		err = b.CheckPorts(ctx, mustParsePorts(t, "9090:80"))
		ln.Close()
		if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "socket") {
			t.Errorf("CheckPorts of a listening port: %v, want ErrPortInUse naming a socket", err)
		}
		if err := b.CheckPorts(ctx, mustParsePorts(t, "10.9.9.9:9091:80")); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("CheckPorts on an address the host does not have: %v, want ErrInvalidConfig", err)
		}
		// Another state directory's port is in use too.
		other := newBridge(t, t.TempDir(), WithBridgeName("prport1"), WithSubnet(netip.MustParsePrefix("10.211.0.0/24")))
		if err := other.CheckPorts(ctx, mustParsePorts(t, "8081:80")); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "another pirun state directory") {
			t.Errorf("CheckPorts from another state directory: %v, want ErrPortInUse", err)
		}

		// UDP flows that went to r0 and r1, kept open across the removal.
		var stale []*net.UDPConn
		for i := 0; i < 8 && len(stale) < 2; i++ {
			conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:5353")))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if s, err := askOn(conn); err == nil && (s == "r0" || s == "r1") {
				stale = append(stale, conn)
			}
		}
		if len(stale) != 2 {
			t.Fatalf("%d of 8 UDP flows went to r0 or r1, want 2", len(stale))
		}

		// Removing two replicas: the rest share the ports, the removed
		// ones get nothing, not even the flows they had.
		if err := b.Unpublish(ctx, ids[:2]); err != nil {
			t.Fatal(err)
		}
		for _, conn := range stale {
			if s, err := askOn(conn); err != nil || s != "r2" && s != "r3" {
				t.Errorf("a UDP flow that went to a removed replica, sent again from the same port: %q, %v; want r2 or r3", s, err)
			}
		}
		for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:8080"}, {"udp4", "127.0.0.1:5353"}} {
			if got := tally(tc.network, tc.addr, 40); !mapsEqual(got, map[string]int{"r2": 20, "r3": 20}) {
				t.Errorf("40 requests to %s after removing r0 and r1: %v", tc.addr, got)
			}
		}
		if c := pirunChains(t, "nat"); len(c) != 5 { // PIRUN-PORTS, PIRUN-POSTROUTING, a chain per port
			t.Errorf("nat chains after the rewrite: %v", c)
		}
		if err := b.Unpublish(ctx, ids[:2]); err != nil {
			t.Errorf("Unpublish again: %v", err)
		}
		if err := b.Unpublish(ctx, ids[2:]); err != nil {
			t.Fatal(err)
		}
		assertPortsClean(t, b, "prport0")
		if _, err := ask("tcp4", "127.0.0.1:8080"); err == nil {
			t.Error("127.0.0.1:8080 still answers after the last replica was unpublished")
		}
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
	})
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A Publish that fails halfway leaves nothing; sysctls that were 1 before
// stay 1 and are not recorded.
func TestPublishRollback(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		loopbackUpHere(t)
		ctx := context.Background()
		b := newBridge(t, t.TempDir(), WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
		eps, err := b.Allocate(ctx, testIDs("q", 2))
		if err != nil {
			t.Fatal(err)
		}
		startReplicas(t, b, eps[:1])
		if err := writeSysctl("/proc/sys", localnetKey("prport0"), 1); err != nil {
			t.Fatal(err)
		}
		// eps[1] has no veth: setting its hairpin mode fails.
		err = b.Publish(ctx, mustParsePorts(t, "127.0.0.1:8080:80", "8081:80"), eps)
		if err == nil || !strings.Contains(err.Error(), eps[1].HostIf) {
			t.Fatalf("Publish to a container without a veth: %v", err)
		}
		assertPortsClean(t, b)
		if v := sysctlValue(t, localnetKey("prport0")); v != 1 {
			t.Errorf("route_localnet set before pirun is %d after a rollback, want 1 kept", v)
		}
		if v := sysctlValue(t, forwardingKey("prport0")); v != 0 {
			t.Errorf("forwarding is %d after a rollback, want 0", v)
		}
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
	})
}

// Concurrent Publish and Unpublish calls of several Bridges on one state
// directory (as several pirun processes) keep the rules and records
// consistent: each port once, one winner for a contested port.
func TestPublishConcurrent(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		loopbackUpHere(t)
		ctx := context.Background()
		dir := t.TempDir()
		b := newBridge(t, dir, WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
		eps, err := b.Allocate(ctx, testIDs("c", 3))
		if err != nil {
			t.Fatal(err)
		}
		startReplicas(t, b, eps)
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		var errs []error
		for i := range 8 {
			// Made here, on the thread in the test's namespace: NewBridge
			// takes the calling thread's namespace as the host.
			bi := newBridge(t, dir, WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
			ports := mustParsePorts(t, fmt.Sprintf("127.0.0.1:%d:80", 8100+i%4)) // two contenders per port
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := bi.Publish(ctx, ports, eps)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won++
				case !errors.Is(err, ErrPortInUse):
					errs = append(errs, err)
				}
			}()
		}
		wg.Wait()
		if won != 4 || len(errs) > 0 {
			t.Fatalf("%d publishes won, want 4; errors: %v", won, errs)
		}
		ipt, err := iptables.New()
		if err != nil {
			t.Fatal(err)
		}
		rules, err := ipt.List("nat", dispatchChain.name)
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != 5 {
			t.Errorf("PIRUN-PORTS holds %q, want 4 rules", rules)
		}
		for i := range 4 {
			addr := fmt.Sprintf("127.0.0.1:%d", 8100+i)
			if got := tally("tcp4", addr, 6); !mapsEqual(got, map[string]int{"r0": 2, "r1": 2, "r2": 2}) {
				t.Errorf("6 requests to %s: %v", addr, got)
			}
		}
		// Unpublish the replicas one by one, concurrently.
		for _, ep := range eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := b.Unpublish(ctx, []string{ep.ContainerID}); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		assertPortsClean(t, b, "prport0")
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
	})
}

// A rewrite that a crash interrupted (a record naming two chains, at any
// point of the swap) is finished by the next Unpublish.
func TestUnpublishAfterCrash(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		loopbackUpHere(t)
		ctx := context.Background()
		b := newBridge(t, t.TempDir(), WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
		eps, err := b.Allocate(ctx, testIDs("k", 2))
		if err != nil {
			t.Fatal(err)
		}
		startReplicas(t, b, eps)
		if err := b.Publish(ctx, mustParsePorts(t, "127.0.0.1:8080:80"), eps); err != nil {
			t.Fatal(err)
		}
		for _, crash := range []string{"recorded", "built", "dispatched"} {
			recs, err := b.readPortRecords()
			if err != nil || len(recs) != 1 {
				t.Fatalf("records %v, %v", recs, err)
			}
			r := recs[0]
			next := newChainName(r.Port)
			r.Chains = append(r.Chains, next)
			if err := b.writePortRecord(r); err != nil {
				t.Fatal(err)
			}
			if crash != "recorded" {
				if err := restoreNat([]string{":" + next + " - [0:0]", "-A " + next + " " + strings.Join(dnatSpecs(r.Port, eps[:1])[0], " ")}); err != nil {
					t.Fatal(err)
				}
			}
			if crash == "dispatched" {
				if err := b.insertDispatch(r.Port, next); err != nil {
					t.Fatal(err)
				}
			}
			// Nothing to remove: the rewrite is finished, with both targets.
			if err := b.Unpublish(ctx, []string{testIDs("z", 1)[0]}); err != nil {
				t.Fatalf("crash after the next chain was %s: %v", crash, err)
			}
			if got := tally("tcp4", "127.0.0.1:8080", 4); !mapsEqual(got, map[string]int{"r0": 2, "r1": 2}) {
				t.Errorf("crash after the next chain was %s: then %v", crash, got)
			}
			if c := pirunChains(t, "nat"); len(c) != 3 {
				t.Errorf("crash after the next chain was %s: nat chains %v, want PIRUN-PORTS, PIRUN-POSTROUTING and one port chain", crash, c)
			}
		}
		if err := b.Unpublish(ctx, []string{eps[0].ContainerID, eps[1].ContainerID}); err != nil {
			t.Fatal(err)
		}
		assertPortsClean(t, b, "prport0")
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPortsStateFiles(t *testing.T) {
	p := mustParsePorts(t, "127.0.0.1:8080:80/udp", "8080:80")
	if got := []string{portFile(p[0]), portFile(p[1])}; !slices.Equal(got, []string{"udp-127.0.0.1-8080.json", "tcp-0.0.0.0-8080.json"}) {
		t.Errorf("port files %q", got)
	}
	if n := newChainName(PortMapping{HostPort: 65535, Protocol: "tcp"}); len(n) > 28 || !strings.HasPrefix(n, "PIRUN-TCP65535-") {
		t.Errorf("chain name %q: longer than iptables allows (28) or misnamed", n)
	}
	good := portRecord{Port: p[1], Chains: []string{newChainName(p[1])}}
	if err := good.check(portFile(p[1])); err != nil {
		t.Errorf("check of a good record: %v", err)
	}
	for _, bad := range []portRecord{
		{Port: p[1]},
		{Port: p[1], Chains: []string{"INPUT"}},
		{Port: p[1], Chains: []string{"PIRUN-TCP8081-abcdef"}},
		{Port: p[0], Chains: []string{newChainName(p[0])}},
		{Port: p[1], Chains: good.Chains, Targets: []Endpoint{{Network: "../x", HostIf: "pr1", Address: netip.MustParsePrefix("10.0.0.2/24")}}},
	} {
		if err := bad.check(portFile(p[1])); err == nil {
			t.Errorf("check of %+v: no error", bad)
		}
	}
	if d := filepath.Base((&Bridge{dir: "/s/network/pirun0"}).portsDir()); d != portsDirName {
		t.Errorf("ports directory %q", d)
	}
}

// The guards: with route_localnet and forwarding turned on for the
// bridge, a container still cannot reach the host's loopback services nor
// have the host forward its traffic to another network. Each check is
// made once with the guard and once without it, so it can fail.
func TestPublishGuards(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		loopbackUpHere(t)
		ctx := context.Background()
		b := newBridge(t, t.TempDir(), WithBridgeName("prport0"), WithSubnet(netip.MustParsePrefix("10.210.0.0/24")))
		eps, err := b.Allocate(ctx, testIDs("g", 1))
		if err != nil {
			t.Fatal(err)
		}
		r0 := startReplicas(t, b, eps)[0]
		if err := b.Publish(ctx, mustParsePorts(t, "127.0.0.1:8080:80", "8081:80"), eps); err != nil {
			t.Fatal(err)
		}
		ipt, err := iptables.New()
		if err != nil {
			t.Fatal(err)
		}

		// A service of the host on 127.0.0.9, and r0 routing 127.0.0.9
		// through eth0 to the host (as a container could with raw packets).
		ln, err := net.Listen("tcp4", "127.0.0.9:7777")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go acceptAndClose(ln, "host-loopback")
		doIn(t, r0.ns, func() {
			if err := writeSysctl("/proc/sys", "net/ipv4/conf/eth0/route_localnet", 1); err != nil {
				t.Fatal(err)
			}
			lo, _ := netlink.LinkByName("lo")
			local := &netlink.Route{Table: 255, Type: 2 /* RTN_LOCAL */, Scope: netlink.SCOPE_HOST, LinkIndex: lo.Attrs().Index,
				Dst: ipNet(netip.MustParsePrefix("127.0.0.0/8")), Src: net.IPv4(127, 0, 0, 1)}
			if err := netlink.RouteDel(local); err != nil {
				t.Fatalf("delete r0's local route 127.0.0.0/8: %v", err)
			}
			eth0, _ := netlink.LinkByName("eth0")
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("127.0.0.9/32")), Gw: eps[0].Gateway.AsSlice()}); err != nil {
				t.Fatal(err)
			}
		})

		// Another network behind the host, which forwards from it.
		out, outPath := newNS(t)
		defer out.Close()
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "prout0", Flags: net.FlagUp}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(out))}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		hostOut, _ := netlink.LinkByName("prout0")
		if err := netlink.AddrAdd(hostOut, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.212.0.1/24"))}); err != nil {
			t.Fatal(err)
		}
		if err := writeSysctl("/proc/sys", forwardingKey("prout0"), 1); err != nil {
			t.Fatal(err)
		}
		var outLn net.Listener
		doIn(t, out, func() {
			eth0, _ := netlink.LinkByName("eth0")
			netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.212.0.2/24"))})
			netlink.LinkSetUp(eth0)
			netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IPv4(10, 212, 0, 1)})
			if outLn, err = net.Listen("tcp4", ":7777"); err != nil {
				t.Fatal(err)
			}
		})
		_ = outPath
		defer outLn.Close()
		go acceptAndClose(outLn, "other-network")

		for _, tc := range []struct {
			addr, answer string
			guard        hookedChain
		}{
			{"127.0.0.9:7777", "host-loopback", inputGuardChain},
			{"10.212.0.2:7777", "other-network", forwardGuardChain},
		} {
			rules, err := ipt.List("filter", tc.guard.name)
			if err != nil || len(rules) != 2 {
				t.Fatalf("%s: %q, %v; want one guard rule", tc.guard.name, rules, err)
			}
			doIn(t, r0.ns, func() {
				if got, err := ask("tcp4", tc.addr); err == nil {
					t.Errorf("r0 reached %s (%q) through the guard", tc.addr, got)
				}
			})
			if err := ipt.ClearChain("filter", tc.guard.name); err != nil {
				t.Fatal(err)
			}
			doIn(t, r0.ns, func() {
				if got, err := ask("tcp4", tc.addr); err != nil || got != tc.answer {
					t.Errorf("without the guard, r0 to %s: %q, %v; want %q (else the test proves nothing)", tc.addr, got, err, tc.answer)
				}
			})
		}
		if err := b.Unpublish(ctx, []string{eps[0].ContainerID}); err != nil {
			t.Fatal(err)
		}
		assertPortsClean(t, b, "prport0")
		if err := b.Release(ctx, eps); err != nil {
			t.Fatal(err)
		}
	})
}

func acceptAndClose(ln net.Listener, answer string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(answer))
		c.Close()
	}
}
