package main

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// newParentBridge makes an empty bridge, in this test binary's own network
// namespace, to serve as a macvlan parent.
func newParentBridge(t *testing.T, name string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("parent %s: %v", name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
}

// pirun on a macvlan network: flags checked, concurrent spawns from
// several processes get distinct addresses that answer from the host, and
// rm -f --all after a kill -9 mid-spawn leaves nothing of the network.
func TestCLIMacvlan(t *testing.T) {
	c := newCLI(t)
	const parent = "pirun-clan"
	newParentBridge(t, parent)
	subnet := netip.MustParsePrefix("10.131.0.0/24")
	mv := []string{"--network", "macvlan", "--parent", parent}

	c.fails("--parent and --gateway are for --network macvlan", "run", "--parent", parent, "rpi-busybox-httpd", "true")
	c.fails("--parent IFACE is required", "spawn", "--network", "macvlan", "rpi-busybox-httpd")
	c.fails("no subnet given", append(append([]string{"spawn"}, mv...), "rpi-busybox-httpd")...)
	c.fails("ports", "run", "-d", "--network", "host", "-p", "8080:80", "rpi-busybox-httpd")

	const procs, each = 3, 8
	errs := make(chan error, procs)
	for range procs {
		go func() {
			args := append(append([]string{"spawn", "-q", "-n", fmt.Sprint(each), "--name", "mv", "--subnet", subnet.String()}, mv...), "rpi-busybox-httpd")
			out, err := c.cmd(args...).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%w: %s", err, out)
			}
			errs <- err
		}()
	}
	for range procs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	ps := c.ps("-a")
	if len(ps) != procs*each {
		t.Errorf("%d containers, want %d", len(ps), procs*each)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	ips := map[string]bool{}
	for _, p := range ps {
		a, err := netip.ParseAddr(p.IP)
		if p.Status != "running" || ips[p.IP] || err != nil || !subnet.Contains(a) {
			t.Errorf("container %s: status %s, ip %q (duplicate, or not in %s?)", p.Name, p.Status, p.IP, subnet)
			continue
		}
		ips[p.IP] = true
		resp, err := client.Get("http://" + p.IP + "/")
		if err != nil {
			t.Errorf("GET %s: %v", p.IP, err)
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "pi.jpg") {
			t.Errorf("GET %s: %s %q", p.IP, resp.Status, body)
		}
	}

	// kill -9 mid-spawn (on the subnet in use: none given), then rm.
	cmd := c.cmd(append(append([]string{"spawn", "-q", "-n", "100", "--name", "crash"}, mv...), "rpi-busybox-httpd")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		running := 0
		for _, p := range c.ps() {
			if strings.HasPrefix(p.Name, "crash-") && p.Status == "running" {
				running++
			}
		}
		if running >= 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	c.ok("rm", "-f", "--all")
	if ps := c.ps("-a"); len(ps) != 0 {
		t.Errorf("after rm -f --all: %d left", len(ps))
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "pirun-mv") {
			t.Errorf("link %s left", l.Attrs().Name)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && subnet.Contains(netip.AddrFrom4([4]byte(r.Dst.IP.To4()))) {
			t.Errorf("route %s left", r.Dst)
		}
	}
	dir := filepath.Join(c.state, "network", "macvlan", parent)
	if ents, _ := os.ReadDir(filepath.Join(dir, "ips")); len(ents) != 0 {
		t.Errorf("%d allocations left in %s", len(ents), dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "network.json")); err == nil {
		t.Errorf("network.json left in %s", dir)
	}
}
