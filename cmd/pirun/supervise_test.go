package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// supervisors returns the pids of the supervisor processes of state.
func supervisors(t *testing.T, state string) []int {
	t.Helper()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		hasState, isSup := false, false
		for i, a := range args {
			hasState = hasState || a == state && i > 0 && args[i-1] == "--state"
			isSup = isSup || a == "supervise"
		}
		if hasState && isSup {
			pids = append(pids, pid)
		}
	}
	return pids
}

type supEntry struct {
	Name       string `json:"name"`
	Restarts   int    `json:"restarts"`
	ExitCode   *int   `json:"exit_code"`
	Supervisor int    `json:"supervisor_pid"`
}

// supervised returns the record of the container named name, from ps -a.
func (c *cli) supervised(name string) supEntry {
	c.t.Helper()
	var all []supEntry
	out := c.ok("ps", "-a", "--format", "json")
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		c.t.Fatalf("ps -a --format json: %v: %s", err, out)
	}
	for _, e := range all {
		if e.Name == name {
			return e
		}
	}
	c.t.Fatalf("ps -a: no container %s", name)
	return supEntry{}
}

// spawn --restart leaves one supervisor per group, which restarts an
// OOM-killed container; ps -a shows it. Killing the supervisor leaves
// its containers running and removable; without --restart nothing stays.
func TestCLISupervisor(t *testing.T) {
	c := newCLI(t)
	c.ok("spawn", "-q", "-n", "10", "--memory", "8m", "--restart", "on-failure", "--network", "none", "--name", "web", "rpi-busybox-httpd")
	if n := len(supervisors(t, c.state)); n != 1 {
		t.Fatalf("%d supervisor processes after one spawn --restart, want 1", n)
	}
	var stats []struct {
		Name        string `json:"name"`
		MemoryLimit uint64 `json:"memory_limit"`
	}
	if err := json.Unmarshal([]byte(c.ok("stats", "--no-stream", "--format", "json")), &stats); err != nil || len(stats) != 10 {
		t.Fatalf("stats: %v, %d containers", err, len(stats))
	}
	for _, s := range stats {
		if s.MemoryLimit != 8<<20 {
			t.Errorf("stats of %s: memory limit %d, want 8m", s.Name, s.MemoryLimit)
		}
	}

	// 40 MB under 8 MB: OOM-killed (137), restarted, again and again.
	c.ok("spawn", "-q", "--memory", "8m", "--restart", "on-failure", "--network", "none", "--name", "hog", "rpi-busybox-httpd",
		"sh", "-c", `sleep 0.5; x=$(busybox head -c 40000000 /dev/zero | busybox tr "\0" a)`)
	if n := len(supervisors(t, c.state)); n != 2 {
		t.Errorf("%d supervisor processes after two spawns --restart, want 2", n)
	}
	var hog supEntry
	for deadline := time.Now().Add(15 * time.Second); ; {
		hog = c.supervised("hog-1")
		if hog.Restarts >= 1 && hog.ExitCode != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hog.Restarts < 1 || hog.ExitCode == nil || *hog.ExitCode != 137 {
		t.Fatalf("hog after 15 s: %d restarts, exit code %v; want restarts after an OOM kill (137)", hog.Restarts, hog.ExitCode)
	}
	if out := c.ok("ps", "-a"); !strings.Contains(out, "restarts") || !strings.Contains(out, "137") {
		t.Errorf("ps -a does not show the restarts and the exit code: %q", out)
	}

	// Killing web's supervisor leaves web running.
	web := c.supervised("web-1")
	if web.Supervisor == 0 || web.Supervisor == hog.Supervisor {
		t.Fatalf("web-1's supervisor %d, hog's %d: want two distinct", web.Supervisor, hog.Supervisor)
	}
	if err := unix.Kill(web.Supervisor, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	running := 0
	for _, e := range c.ps() {
		if strings.HasPrefix(e.Name, "web-") && e.Status == "running" {
			running++
		}
	}
	if running != 10 {
		t.Errorf("%d of 10 containers running after their supervisor was killed", running)
	}

	// Without --restart, no process stays.
	before := len(supervisors(t, c.state))
	c.ok("spawn", "-q", "-n", "2", "--network", "none", "--name", "plain", "rpi-busybox-httpd")
	if n := len(supervisors(t, c.state)); n != before {
		t.Errorf("spawn without --restart: %d supervisor processes, was %d", n, before)
	}

	// rm ends the last supervisor: nothing is left to watch.
	c.ok("rm", "-f", "--all")
	for deadline := time.Now().Add(10 * time.Second); len(supervisors(t, c.state)) > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("supervisors still running 10 s after rm -f --all: %v", supervisors(t, c.state))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rm -f of a container that its supervisor is restarting, at any moment
// of the restart cycle, removes it: no "still running", no supervisor and
// no record left.
func TestCLIRemoveWhileRestarting(t *testing.T) {
	c := newCLI(t)
	for i := range 12 {
		c.ok("spawn", "-q", "--restart", "always", "--network", "none", "--name", "flap", "rpi-busybox-httpd",
			"sh", "-c", "sleep 0.2; exit 3")
		// Spread the rm over the first cycles (0.2 s runs, back-off 0.1, 0.2 s).
		time.Sleep(time.Duration(i*60) * time.Millisecond)
		c.ok("rm", "-f", "--all")
		if out := c.ok("ps", "-a", "-q"); strings.TrimSpace(out) != "" {
			t.Fatalf("round %d: left after rm -f --all:\n%s", i, c.ok("ps", "-a"))
		}
		for deadline := time.Now().Add(10 * time.Second); len(supervisors(t, c.state)) > 0; {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: supervisor still running 10 s after rm -f --all", i)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
