package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pirun/pirun/network"
)

func (c *cli) networkLs() network.Info {
	c.t.Helper()
	var infos []network.Info
	out := c.ok("network", "ls", "--format", "json")
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
		c.t.Fatalf("network ls --format json: %v: %s", err, out)
	}
	return infos[0]
}

// pirun network ls shows the bridge, its containers and rules; prune frees
// an address whose container is gone and nothing in use.
func TestCLINetwork(t *testing.T) {
	c := newCLI(t)
	if info := c.networkLs(); info.Name != "pirun0" || info.InUse != 0 || len(info.Bridges) != 0 || len(info.Rules) != 0 {
		t.Errorf("network ls before any container: %+v", info)
	}
	c.ok("spawn", "-q", "-n", "3", "--name", "net", "rpi-busybox-httpd")
	info := c.networkLs()
	if info.InUse != 3 || info.Unused != 0 || len(info.Bridges) != 1 || len(info.Rules) != 2 {
		t.Fatalf("network ls with 3 containers: %+v", info)
	}
	if b := info.Bridges[0]; b.Name != "pirun0" || b.Containers != 3 || !b.Exists || b.Ports != 3 || b.Gateway.String() != "10.123.0.1" {
		t.Errorf("bridge: %+v", b)
	}
	if table := c.ok("network", "ls"); !strings.Contains(table, "pirun0 ") || !strings.Contains(table, "10.123.0.0/22") || !strings.Contains(table, "-A PIRUN-FORWARD -i pirun0 -j ACCEPT") {
		t.Errorf("network ls table:\n%s", table)
	}

	// An address whose container is gone (a crash between the two).
	gone := strings.Repeat("d", 64)
	stale := filepath.Join(c.state, "network", "pirun0", "ips", "10.123.3.200")
	if err := os.WriteFile(stale, []byte(gone), 0o600); err != nil {
		t.Fatal(err)
	}
	if info := c.networkLs(); info.InUse != 4 || info.Unused != 1 {
		t.Errorf("network ls with a stale address: in use %d, unused %d; want 4, 1", info.InUse, info.Unused)
	}
	var rep network.PruneReport
	if err := json.Unmarshal([]byte(c.ok("network", "prune", "--format", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Addresses) != 1 || rep.Addresses[0].String() != "10.123.3.200" || len(rep.Links)+len(rep.Rules)+len(rep.Sysctls) != 0 {
		t.Errorf("prune: %+v, want the stale address only", rep)
	}
	if info := c.networkLs(); info.InUse != 3 || info.Unused != 0 || info.Bridges[0].Ports != 3 {
		t.Errorf("network ls after prune: %+v", info)
	}
	if n := len(c.ps()); n != 3 {
		t.Errorf("%d containers running after prune, want 3", n)
	}
	if out := c.ok("network", "prune"); !strings.Contains(out, "freed 0 addresses, deleted 0 links, 0 rules") {
		t.Errorf("prune with every address in use: %s", out)
	}

	c.ok("rm", "-f", "--all")
	if info := c.networkLs(); info.InUse != 0 || len(info.Bridges) != 0 || len(info.Rules) != 0 || len(info.Sysctls) != 0 {
		t.Errorf("network ls after rm: %+v", info)
	}
}

// A spawn the host cannot hold fails before it makes anything, naming the
// limit: the subnet, or kernel.pid_max.
func TestCLILimitsChecked(t *testing.T) {
	c := newCLI(t)
	c.fails("subnet is full", "--subnet", "10.98.0.0/29", "spawn", "-n", "6", "rpi-busybox-httpd")
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	pidMax, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pidMax > 1<<17 {
		t.Logf("kernel.pid_max %d: not asking for more containers than it holds", pidMax)
	} else {
		// The subnet is small too: were the pid check wrong, nothing
		// would start either.
		c.fails("kernel.pid_max", "--subnet", "10.98.0.0/29", "spawn", "-n", strconv.Itoa(pidMax/2+1), "rpi-busybox-httpd")
	}
	if ps := c.ps("-a"); len(ps) != 0 {
		t.Errorf("%d containers recorded after refused spawns", len(ps))
	}
	if ents, _ := os.ReadDir(filepath.Join(c.state, "names")); len(ents) != 0 {
		t.Errorf("%d names left", len(ents))
	}
}
