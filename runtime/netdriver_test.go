package runtime_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// The test binary runs in a network namespace of its own (TestMain): "the
// host" below is that namespace. Other hosts of a LAN are namespaces the
// tests make, and every address is inside one of them.

// lan is a macvlan parent made by a test: an empty bridge, and another
// host on it.
type lan struct {
	parent netlink.Link
	subnet netip.Prefix
	host   netns.NsHandle // another host of the LAN
	hostIP netip.Addr
}

// newLAN makes the bridge name as a LAN 10.130.k.0/24 and a host at .250
// on it, in a namespace of its own linked by a veth. It removes them when
// the test ends.
func newLAN(t *testing.T, name string, k int) *lan {
	t.Helper()
	l := &lan{subnet: netip.MustParsePrefix(fmt.Sprintf("10.130.%d.0/24", k)), hostIP: netip.MustParseAddr(fmt.Sprintf("10.130.%d.250", k))}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatalf("parent %s: %v", name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(&netlink.Bridge{LinkAttrs: attrs}) })
	var err error
	if l.parent, err = netlink.LinkByName(name); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l.parent); err != nil {
		t.Fatal(err)
	}
	l.host = newNetns(t)
	port := netlink.NewLinkAttrs()
	port.Name = name + "-h"
	port.MasterIndex = l.parent.Attrs().Index
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: port, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(l.host))}); err != nil {
		t.Fatal(err)
	}
	if p, err := netlink.LinkByName(port.Name); err != nil || netlink.LinkSetUp(p) != nil {
		t.Fatalf("veth %s: %v", port.Name, err)
	}
	h, err := netlink.NewHandleAt(l.host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, n := range []string{"lo", "eth0"} {
		link, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if n == "eth0" {
			if err := h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: l.hostIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// newNetns makes a network namespace without moving any thread into it
// for longer than its creation; it is closed (and, unused, gone) when the
// test ends.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	ch := make(chan netns.NsHandle, 1)
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		ch <- ns
	}()
	select {
	case ns := <-ch:
		t.Cleanup(func() { ns.Close() })
		return ns
	case err := <-errc:
		t.Fatalf("new network namespace: %v", err)
	}
	return 0
}

// getFrom fetches http://addr/ from inside ns, once, within timeout.
func getFrom(ns netns.NsHandle, addr netip.Addr, timeout time.Duration) (string, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			ch <- result{err: err}
			return
		}
		// The socket belongs to the namespace of the thread that makes it.
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, 80).String(), timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return "", r.err
	}
	defer r.c.Close()
	r.c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(r.c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(r.c, 1<<20))
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(b, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(b, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("response %.40q", b)
	}
	return string(b), nil
}

// The conformance suite of the network drivers that give containers
// addresses: N containers each answer HTTP from the host (and, on macvlan,
// from another host of the LAN) and from each other; rm leaves no link,
// route, address or state behind.
func TestNetworkDrivers(t *testing.T) {
	for i, driver := range []string{runtime.NetworkBridge, runtime.NetworkMacvlan} {
		t.Run(driver, func(t *testing.T) { testDriver(t, driver, i+1) })
	}
}

func testDriver(t *testing.T, driver string, k int) {
	rt := newRuntime(t)
	ctx := context.Background()
	state := rt.StateDir()
	cfg := runtime.Config{Image: imageName, Name: "net-" + driver, Network: driver}
	var l *lan
	if driver == runtime.NetworkMacvlan {
		l = newLAN(t, fmt.Sprintf("pirun-lan%d", k), k)
		cfg.Macvlan = network.MacvlanConfig{Parent: l.parent.Attrs().Name, Subnet: l.subnet}
	}
	const n = 5
	cs, err := rt.Spawn(ctx, cfg, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	seen := map[string]bool{}
	for _, c := range cs {
		if c.IP == "" || seen[c.IP] || c.Endpoint == nil {
			t.Fatalf("container %s: ip %q, endpoint %+v", c.Name, c.IP, c.Endpoint)
		}
		seen[c.IP] = true
		if l != nil {
			if !l.subnet.Contains(netip.MustParseAddr(c.IP)) || c.Endpoint.Driver != network.DriverMacvlan || c.Endpoint.Parent != l.parent.Attrs().Name {
				t.Errorf("container %s: ip %s, endpoint %+v: want macvlan on %s in %s", c.Name, c.IP, c.Endpoint, l.parent.Attrs().Name, l.subnet)
			}
		}
		if body, err := get(client, "http://"+c.IP+"/"); err != nil || !strings.Contains(body, "Hello from pirun") {
			t.Errorf("host to container %s at %s: %v", c.Name, c.IP, err)
		}
		if l != nil {
			if body, err := getFrom(l.host, netip.MustParseAddr(c.IP), 5*time.Second); err != nil || !strings.Contains(body, "Hello from pirun") {
				t.Errorf("LAN host %s to container %s at %s: %v", l.hostIP, c.Name, c.IP, err)
			}
		}
	}
	// Container to container, and (macvlan) to the LAN's other host.
	var out bytes.Buffer
	// (nc: Debian's static busybox wget crashes on any URL.)
	script := "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 " + cs[0].IP + " 80"
	if l != nil {
		// The other host serves nothing: a refused connection shows it
		// was reached (no route or no neighbour would time out instead).
		script += " && { nc -w 5 " + l.hostIP.String() + " 80 </dev/null; true; } 2>&1"
	}
	run := cfg
	run.Name, run.Cmd = "net-"+driver+"-client", []string{"sh", "-c", script}
	rc, code, err := rt.Run(ctx, run, runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || !strings.Contains(out.String(), "Hello from pirun") {
		t.Errorf("container to container %s: exit %d, %q", cs[0].IP, code, out.String())
	}
	if l != nil && !strings.Contains(out.String(), "refused") {
		t.Errorf("container to the LAN host %s: %q, want a refused connection", l.hostIP, out.String())
	}

	if l != nil {
		// As if pirun had died before it recorded cs[4]'s address: the
		// record names only the driver and parent, and rm finds it.
		forgetAddress(t, state, cs[4].ID)
	}
	ids := []string{rc.ID}
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	// Removing some keeps the others reachable.
	if err := rt.Remove(ctx, ids[:2], true); err != nil {
		t.Fatal(err)
	}
	if _, err := get(client, "http://"+cs[1].IP+"/"); err != nil {
		t.Errorf("container %s after removing another: %v", cs[1].Name, err)
	}
	if err := rt.Remove(ctx, ids[2:], true); err != nil {
		t.Fatal(err)
	}
	for ip := range seen {
		if _, err := get(&http.Client{Timeout: 300 * time.Millisecond}, "http://"+ip+"/"); err == nil {
			t.Errorf("%s still answers after rm", ip)
		}
	}
	if l != nil {
		assertMacvlanGone(t, state, l)
	}
	// newRuntime's cleanup checks the rest: records, names, mounts,
	// cgroups, the bridge and veths.
}

// forgetAddress rewrites a container's record as it is before its
// address is allocated.
func forgetAddress(t *testing.T, state, id string) {
	t.Helper()
	p := filepath.Join(state, "containers", id, "state.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	ep := rec["endpoint"].(map[string]any)
	rec["endpoint"] = map[string]any{"driver": ep["driver"], "parent": ep["parent"], "container_id": id}
	rec["ip"] = ""
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// assertMacvlanGone checks that the host holds nothing of the macvlan
// network on l: no pirun-mv link, no route into the subnet, no address
// on the parent, no allocation or record.
func assertMacvlanGone(t *testing.T, state string, l *lan) {
	t.Helper()
	links, _ := netlink.LinkList()
	for _, link := range links {
		if strings.HasPrefix(link.Attrs().Name, "pirun-mv") {
			t.Errorf("leak: link %s", link.Attrs().Name)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && l.subnet.Contains(netip.AddrFrom4([4]byte(r.Dst.IP.To4()))) {
			t.Errorf("leak: route %s", r.Dst)
		}
	}
	if a, _ := netlink.AddrList(l.parent, netlink.FAMILY_V4); len(a) != 0 {
		t.Errorf("leak: addresses %v on the parent", a)
	}
	dir := filepath.Join(state, "network", "macvlan", l.parent.Attrs().Name)
	if ents, _ := os.ReadDir(filepath.Join(dir, "ips")); len(ents) != 0 {
		t.Errorf("leak: %d allocations in %s", len(ents), dir)
	}
	for _, f := range []string{"network.json", "last_reserved"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("leak: %s in %s", f, dir)
		}
	}
}

// The host network: no namespace of its own, the host's links and ports;
// -p refused. None: only lo.
func TestNetworkHostAndNone(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()

	// A link only this test's namespace (the "host") has.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "pirun-hostmark"
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(&netlink.Bridge{LinkAttrs: attrs})

	links := func(network string) string {
		t.Helper()
		var out bytes.Buffer
		c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: network, Cmd: []string{"ls", "/sys/class/net"}}, runtime.Stdio{Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Fatalf("ls /sys/class/net with network %s: exit %d: %s", network, code, out.String())
		}
		return strings.Join(strings.Fields(out.String()), " ")
	}
	if got := links(runtime.NetworkNone); got != "lo" {
		t.Errorf("network none: links %q, want lo only", got)
	}
	if got := links(runtime.NetworkHost); !strings.Contains(got, "pirun-hostmark") {
		t.Errorf("network host: links %q, want the host's", got)
	}

	// A server on the host network listens on the host's loopback.
	c, err := rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkHost, Cmd: []string{"httpd", "-f", "-p", "127.0.0.1:8089", "-h", "/www"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.IP != "" || c.Endpoint != nil {
		t.Errorf("host network container: ip %q, endpoint %+v", c.IP, c.Endpoint)
	}
	var body string
	for range 20 { // bounded: httpd may take a moment to listen
		if body, err = get(&http.Client{Timeout: time.Second}, "http://127.0.0.1:8089/"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(body, "Hello from pirun") {
		t.Errorf("httpd on the host network at 127.0.0.1:8089: %v", err)
	}
	if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
		t.Fatal(err)
	}

	bad := []runtime.Config{
		{Image: imageName, Network: runtime.NetworkHost, Ports: []network.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{Image: imageName, Network: runtime.NetworkMacvlan},
		{Image: imageName, Network: runtime.NetworkBridge, Macvlan: network.MacvlanConfig{Parent: "eth0"}},
		{Image: imageName, Network: "overlay"},
	}
	for _, cfg := range bad {
		if _, err := rt.Start(ctx, cfg); !errors.Is(err, runtime.ErrInvalidConfig) {
			t.Errorf("network %q, %+v, ports %v: %v, want ErrInvalidConfig", cfg.Network, cfg.Macvlan, cfg.Ports, err)
		}
	}
}

// PIRUN_TEST_SLAB=N measures the kernel's slab memory per container on
// each network: N web servers each (none, bridge, macvlan, PIRUN_TEST_SLAB_ROUNDS
// rounds, default 1), one GET each on the networks with an address, caches
// dropped before each reading. Slab is the machine's: run it when nothing
// else starts or removes containers (the log shows how many pirun
// containers of other state directories existed before and after each).
//
//	PIRUN_TEST_SLAB=300 go test -tags containers_image_openpgp,runc_nocriu,seccomp \
//	    -run TestNetworkSlab -v -timeout 60m ./runtime/
func TestNetworkSlab(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PIRUN_TEST_SLAB"))
	if n <= 0 {
		t.Skip("skipping: set PIRUN_TEST_SLAB=N to measure the slab per container of each network")
	}
	rounds, _ := strconv.Atoi(os.Getenv("PIRUN_TEST_SLAB_ROUNDS"))
	rounds = max(rounds, 1)
	rt := newRuntime(t, runtime.WithNetworkOptions(network.WithSubnet(netip.MustParsePrefix("10.132.0.0/20"))))
	ctx := context.Background()
	parent := "pirun-slab0"
	attrs := netlink.NewLinkAttrs()
	attrs.Name = parent
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(&netlink.Bridge{LinkAttrs: attrs})
	if l, err := netlink.LinkByName(parent); err != nil || netlink.LinkSetUp(l) != nil {
		t.Fatalf("parent %s: %v", parent, err)
	}
	others := func() int {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/pirun")
		k := 0
		for _, d := range append(dirs, "/sys/fs/cgroup/pirun") {
			ents, _ := os.ReadDir(d)
			m := 0
			for _, e := range ents {
				if e.IsDir() && len(e.Name()) == 64 {
					m++
				}
			}
			k = max(k, m)
		}
		cs, _ := rt.List(ctx)
		return k - len(cs)
	}
	slab := func() (total, unreclaimable int) {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // RCU frees what namespaces and links held
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile("/proc/meminfo")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "Slab:" {
				total, _ = strconv.Atoi(f[1])
			}
			if len(f) >= 2 && f[0] == "SUnreclaim:" {
				unreclaimable, _ = strconv.Atoi(f[1])
			}
		}
		return total, unreclaimable
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for r := range rounds {
		for _, driver := range []string{runtime.NetworkNone, runtime.NetworkBridge, runtime.NetworkMacvlan} {
			cfg := runtime.Config{Image: imageName, Name: "slab", Network: driver}
			if driver == runtime.NetworkMacvlan {
				cfg.Macvlan = network.MacvlanConfig{Parent: parent, Subnet: netip.MustParsePrefix("10.133.0.0/20")}
			}
			o0 := others()
			s0, u0 := slab()
			start := time.Now()
			cs, err := rt.Spawn(ctx, cfg, n, nil)
			if err != nil {
				t.Fatal(err)
			}
			spawned := time.Since(start)
			failed := 0
			for _, c := range cs {
				if c.IP == "" {
					continue
				}
				if _, err := get(client, "http://"+c.IP+"/"); err != nil {
					failed++
				}
			}
			s1, u1 := slab()
			o1 := others()
			ids := make([]string, len(cs))
			for i, c := range cs {
				ids[i] = c.ID
			}
			start = time.Now()
			if err := rt.Remove(ctx, ids, true); err != nil {
				t.Fatal(err)
			}
			removed := time.Since(start)
			s2, _ := slab()
			t.Logf("round %d, %-7s: %d containers in %.1fs (%d GETs failed), removed in %.1fs: slab +%d kB = %.0f kB per container (unreclaimable %.0f kB); after rm %+d kB; other pirun containers %d -> %d",
				r+1, driver, n, spawned.Seconds(), failed, removed.Seconds(), s1-s0, float64(s1-s0)/float64(n), float64(u1-u0)/float64(n), s2-s0, o0, o1)
		}
	}
}
