package runtime_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netns"

	"github.com/pirun/pirun/internal/testutil"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// servesName makes each replica serve its own name (its hostname), so a
// client can tell which one answered.
var servesName = []string{"sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"}

func parsePorts(t *testing.T, specs ...string) []network.PortMapping {
	t.Helper()
	var ps []network.PortMapping
	for _, s := range specs {
		p, err := network.ParsePortSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// fetchName makes one HTTP request on a new connection, from the calling
// thread's network namespace (net.Dial dials on the calling goroutine),
// and returns the page.
func fetchName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, ok := bytes.Cut(resp, []byte("\r\n\r\n"))
	if status, _, _ := bytes.Cut(head, []byte("\r\n")); !ok || !bytes.HasPrefix(status, []byte("HTTP/1.")) || !bytes.Contains(status, []byte(" 200 ")) {
		return "", fmt.Errorf("answer %q", resp)
	}
	return strings.TrimSpace(string(body)), nil
}

// countNames makes n requests (a bounded loop) and counts who answered;
// failures count as "error".
func countNames(addr string, n int) map[string]int {
	m := map[string]int{}
	for range n {
		name, err := fetchName(addr)
		if err != nil {
			name = "error"
		}
		m[name]++
	}
	return m
}

// inContainerNetns runs f on a thread in the network namespace of pid.
func inContainerNetns(t *testing.T, pid int, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		goruntime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.GetFromPid(pid)
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// portChains lists pirun's port chains in this test binary's (private)
// network namespace.
func portChains(t *testing.T) []string {
	t.Helper()
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, table := range []string{"nat", "filter"} {
		chains, err := ipt.ListChains(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chains {
			if strings.HasPrefix(c, "PIRUN-") && c != "PIRUN-FORWARD" {
				out = append(out, table+"/"+c)
			}
		}
	}
	return out
}

func TestPublishGroup(t *testing.T) {
	testutil.RequiresBinary(t, "iptables")
	rt := newRuntime(t)
	ctx := context.Background()
	const n = 6
	ports := parsePorts(t, "127.0.0.1:8080:80", "8081:80")
	cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Name: "pub", Cmd: servesName, Ports: ports}, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
		if got, err := rt.Get(ctx, c.ID); err != nil || len(got.Ports) != 2 || got.Ports[0] != ports[0] || got.Ports[1] != ports[1] {
			t.Errorf("record of %s: ports %v, %v; want %v", c.Name, got.Ports, err, ports)
		}
	}

	// One host port, an exact split over the replicas.
	want := map[string]int{}
	for _, c := range cs {
		want[c.Name] = 10
	}
	if got := countNames("127.0.0.1:8080", 10*n); !equalCounts(got, want) {
		t.Errorf("%d requests to 127.0.0.1:8080: %v, want %v", 10*n, got, want)
	}
	// Hairpin: from inside pub-1, its gateway's port 8081 reaches every
	// replica, pub-1 itself included.
	gw := cs[0].Endpoint.Gateway.String()
	inContainerNetns(t, cs[0].Pid, func() {
		want2 := map[string]int{}
		for _, c := range cs {
			want2[c.Name] = 2
		}
		if got := countNames(gw+":8081", 2*n); !equalCounts(got, want2) {
			t.Errorf("%d requests from pub-1 to %s:8081: %v, want %v", 2*n, gw, got, want2)
		}
	})

	// A port in use is refused before anything starts.
	_, err = rt.Spawn(ctx, runtime.Config{Image: imageName, Name: "other", Ports: parsePorts(t, "8080:80")}, 2, nil)
	if !errors.Is(err, network.ErrPortInUse) {
		t.Errorf("spawn with a port in use: %v, want ErrPortInUse", err)
	}
	if all, _ := rt.List(ctx); len(all) != n {
		t.Errorf("%d containers after the refused spawn, want %d", len(all), n)
	}

	// Removing half: the others share the port, nothing goes to the removed.
	if err := rt.Remove(ctx, ids[:n/2], true); err != nil {
		t.Fatal(err)
	}
	want = map[string]int{}
	for _, c := range cs[n/2:] {
		want[c.Name] = 20
	}
	if got := countNames("127.0.0.1:8080", 10*n); !equalCounts(got, want) {
		t.Errorf("%d requests after removing half: %v, want %v", 10*n, got, want)
	}
	if err := rt.Remove(ctx, ids[n/2:], true); err != nil {
		t.Fatal(err)
	}
	if c := portChains(t); len(c) > 0 {
		t.Errorf("chains left after the last replica: %v", c)
	}
	if _, err := fetchName("127.0.0.1:8080"); err == nil {
		t.Error("127.0.0.1:8080 answers after the last replica was removed")
	}

	// A spawn that fails after its records were made publishes nothing
	// and leaves the port free.
	_, err = rt.Spawn(ctx, runtime.Config{Image: imageName, Name: "bad", Cmd: []string{"false"}, Ports: ports}, 2, nil)
	if !errors.Is(err, runtime.ErrExited) {
		t.Errorf("spawn of containers that exit: %v, want ErrExited", err)
	}
	if c := portChains(t); len(c) > 0 {
		t.Errorf("chains left after a failed spawn: %v", c)
	}
	c, err := rt.Start(ctx, runtime.Config{Image: imageName, Name: "solo", Cmd: servesName, Ports: ports[:1]})
	if err != nil {
		t.Fatalf("publish the port again: %v", err)
	}
	if got, err := fetchName("127.0.0.1:8080"); err != nil || got != "solo" {
		t.Errorf("127.0.0.1:8080 after Start: %q, %v", got, err)
	}
	if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
		t.Fatal(err)
	}
	if c := portChains(t); len(c) > 0 {
		t.Errorf("chains left: %v", c)
	}
}

// Ports need the bridge network.
func TestPublishNeedsBridge(t *testing.T) {
	rt := newRuntime(t)
	_, err := rt.Start(context.Background(), runtime.Config{Image: imageName, Network: runtime.NetworkNone, Ports: parsePorts(t, "8080:80")})
	if !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("ports with --network none: %v, want ErrInvalidConfig", err)
	}
}

func equalCounts(a, b map[string]int) bool {
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

// A container restarted by its supervisor still reaches its own published
// port (its new veth gets hairpin mode again).
func TestPublishRestart(t *testing.T) {
	testutil.RequiresBinary(t, "iptables")
	rt := newRuntime(t)
	ctx := context.Background()
	cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Name: "again", Cmd: servesName, Ports: parsePorts(t, "8081:80"), Restart: runtime.RestartAlways}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cs[0]
	gw := c.Endpoint.Gateway.String()
	inContainerNetns(t, c.Pid, func() {
		if got := countNames(gw+":8081", 2); got["again-1"] != 2 {
			t.Errorf("before the restart, from again-1 to %s:8081: %v", gw, got)
		}
	})
	if err := syscall.Kill(c.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The restart retries, backing off, until the old veth is gone with the
	// old namespace (the kernel frees a namespace asynchronously).
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := rt.Get(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Restarts >= 1 && got.Status == runtime.StatusRunning && got.Pid != c.Pid {
			c = got
			break
		}
		if time.Now().After(deadline) {
			// Not a ports matter: the restart itself failed (its log says
			// why, e.g. the old veth still exists).
			t.Skipf("skipping: the supervisor did not restart the container in 30 s (%s, %d restarts)", got.Status, got.Restarts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Its new httpd listens a moment after its init runs.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := fetchName(c.IP + ":80"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("restarted again-1 does not answer at %s:80: %v", c.IP, err)
		}
	}
	if got := countNames("127.0.0.1:8081", 2); got["again-1"] != 2 {
		t.Errorf("after the restart, from the host: %v", got)
	}
	inContainerNetns(t, c.Pid, func() {
		if got := countNames(gw+":8081", 2); got["again-1"] != 2 {
			t.Errorf("after the restart, from again-1 to %s:8081: %v", gw, got)
		}
	})
	if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
		t.Fatal(err)
	}
}
