package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"

	"github.com/pirun/pirun/internal/testutil"
)

// serveName makes each replica serve its own name (its hostname).
var serveName = []string{"sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"}

// tallyNames makes n requests to url, each on a new connection and bounded
// by its timeout, and counts who answered ("error" for a failure).
func tallyNames(url string, n int) map[string]int {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	m := map[string]int{}
	for range n {
		name := "error"
		if resp, err := client.Get(url); err == nil {
			b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				name = strings.TrimSpace(string(b))
			}
		}
		m[name]++
	}
	return m
}

// The demonstration, at its scale: one host port on 127.0.0.1 for
// a group of 100; 1,000 requests all succeed and reach every replica;
// after 50 are removed, 1,000 more all succeed and none reaches a removed
// one. A second -p 8080:80 is refused and starts nothing.
func TestCLIPublishGroup(t *testing.T) {
	testutil.RequiresBinary(t, "iptables")
	c := newCLI(t)
	const n, requests = 100, 1000
	c.ok(append([]string{"spawn", "-q", "-n", fmt.Sprint(n), "--name", "web", "-p", "127.0.0.1:8080:80", "rpi-busybox-httpd"}, serveName...)...)

	table := c.ok("ps")
	if lines := strings.Count(table, "127.0.0.1:8080->80/tcp"); lines != n || !strings.Contains(table, "PORTS") {
		t.Errorf("ps shows the port on %d lines, want %d:\n%.400s", lines, n, table)
	}
	var ps []struct {
		Name  string `json:"name"`
		Ports []struct {
			HostIP        string `json:"host_ip"`
			HostPort      int    `json:"host_port"`
			ContainerPort int    `json:"container_port"`
			Protocol      string `json:"protocol"`
		} `json:"ports"`
	}
	if err := json.Unmarshal([]byte(c.ok("ps", "--format", "json")), &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps) != n || len(ps[0].Ports) != 1 || ps[0].Ports[0].HostIP != "127.0.0.1" || ps[0].Ports[0].HostPort != 8080 ||
		ps[0].Ports[0].ContainerPort != 80 || ps[0].Ports[0].Protocol != "tcp" {
		t.Errorf("ps --format json: %d containers, the first with ports %+v", len(ps), ps[0].Ports)
	}

	got := tallyNames("http://127.0.0.1:8080/", requests)
	t.Logf("%d requests to 127.0.0.1:8080 over %d replicas: %d failed, %d replicas answered, %s", requests, n, got["error"], len(got)-min(got["error"], 1), spread(got))
	if got["error"] > 0 || len(got) != n {
		t.Errorf("%d failures, %d replicas answered; want 0 and %d: %v", got["error"], len(got), n, got)
	}

	// A second publication of the port is refused, before anything starts.
	out, code := c.run("spawn", "-n", "2", "--name", "other", "-p", "8080:80", "rpi-busybox-httpd")
	t.Logf("a second -p 8080:80: exit %d: %s", code, strings.TrimSpace(out))
	if code != 125 || !strings.Contains(out, "port 0.0.0.0:8080/tcp: host port in use: published by pirun") {
		t.Errorf("second -p 8080:80: exit %d, %q; want 125 and an error naming the port", code, out)
	}
	if all := c.ps("-a"); len(all) != n {
		t.Errorf("%d containers after the refused spawn, want %d", len(all), n)
	}

	removed := map[string]bool{}
	args := []string{"rm", "-f"}
	for i := 1; i <= n/2; i++ {
		name := fmt.Sprintf("web-%d", i)
		args = append(args, name)
		removed[name] = true
	}
	c.ok(args...)
	got = tallyNames("http://127.0.0.1:8080/", requests)
	toRemoved := 0
	for name, k := range got {
		if removed[name] {
			toRemoved += k
		}
	}
	t.Logf("after removing %d: %d requests: %d failed, %d replicas answered, %d to a removed one, %s", n/2, requests, got["error"], len(got)-min(got["error"], 1), toRemoved, spread(got))
	if got["error"] > 0 || toRemoved > 0 || len(got) != n/2 {
		t.Errorf("%d failures, %d to removed replicas, %d answered; want 0, 0 and %d", got["error"], toRemoved, len(got), n/2)
	}

	c.ok("rm", "-f", "--all")
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{"nat", "filter"} {
		chains, err := ipt.ListChains(tbl)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if strings.HasPrefix(ch, "PIRUN-") {
				t.Errorf("chain %s/%s left after rm --all", tbl, ch)
			}
		}
	}
}

// spread is "min/max per replica".
func spread(m map[string]int) string {
	lo, hi := -1, 0
	for name, k := range m {
		if name == "error" {
			continue
		}
		if lo < 0 || k < lo {
			lo = k
		}
		hi = max(hi, k)
	}
	return fmt.Sprintf("%d/%d per replica (min/max)", lo, hi)
}

func TestCLIPublishRefused(t *testing.T) {
	testutil.RequiresBinary(t, "iptables")
	c := newCLI(t)
	c.fails("want [IP:]HOSTPORT:CONTAINERPORT", "spawn", "-n", "2", "-p", "80", "rpi-busybox-httpd")
	c.fails("IPv6 is not supported", "run", "-d", "-p", "[::1]:8080:80", "rpi-busybox-httpd")
	c.fails("the same host port twice", "run", "-d", "-p", "8080:80", "-p", "127.0.0.1:8080:81", "rpi-busybox-httpd")
	c.fails("ports need the bridge network", "run", "-d", "--network", "none", "-p", "8080:80", "rpi-busybox-httpd")
	ln, err := net.Listen("tcp4", "127.0.0.1:9191")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c.fails("a socket of the host is bound to it", "run", "-d", "-p", "9191:80", "rpi-busybox-httpd")
	if all := c.ps("-a"); len(all) != 0 {
		t.Errorf("refused runs left %d containers", len(all))
	}
	// run -d publishes too.
	c.ok(append([]string{"run", "-d", "--name", "solo", "-p", "127.0.0.1:8081:80", "rpi-busybox-httpd"}, serveName...)...)
	if got := tallyNames("http://127.0.0.1:8081/", 3); got["solo"] != 3 {
		t.Errorf("run -d -p: %v", got)
	}
}
