package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// pidsPerContainer is the least a container takes of the host's pids and
// threads: its init and one child (busybox httpd forks one per request).
// While it starts, libcontainer's init has a few threads more; the reserve
// covers the containers being started at once.
const pidsPerContainer = 2

// pidReserve is what the check keeps free for everything else: 1/32 of the
// limit, at least 512.
func pidReserve(limit int) int { return max(512, limit/32) }

// checkLimits refuses, before anything is made, a start of n containers
// that the host cannot hold: the network's room (network.ErrSubnetFull,
// …) and the kernel's limits on pids, threads and namespaces
// (ErrHostLimit).
func (r *Runtime) checkLimits(ctx context.Context, g *group, n int) error {
	existing := 0
	if ids, err := r.st.ids(); err == nil {
		existing = len(ids)
	}
	if err := checkHostLimits("/proc", n, existing); err != nil {
		return err
	}
	if g.drv != nil {
		return g.drv.Check(ctx, n)
	}
	return nil
}

// checkHostLimits checks n more containers against the limits under proc
// (tests give a fake tree): kernel.pid_max and kernel.threads-max against
// the threads running now (the 4th field of loadavg), and
// user.max_*_namespaces against the containers that exist (each has its
// own pid, ipc, uts, mount and network namespace). A limit it cannot read
// is not checked.
func checkHostLimits(proc string, n, existing int) error {
	threads := -1
	if b, err := os.ReadFile(filepath.Join(proc, "loadavg")); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 4 {
			if _, total, ok := strings.Cut(f[3], "/"); ok {
				threads, _ = strconv.Atoi(total)
			}
		}
	}
	need := n * pidsPerContainer
	for _, l := range []struct{ key, name string }{
		{"sys/kernel/pid_max", "kernel.pid_max"},
		{"sys/kernel/threads-max", "kernel.threads-max"},
	} {
		limit, ok := readInt(filepath.Join(proc, l.key))
		if !ok || threads < 0 {
			continue
		}
		free := limit - threads - pidReserve(limit)
		if need > free {
			return fmt.Errorf("start %d containers: %s is %d and %d threads run: at about %d pids each they need %d, more than the %d free (%d kept in reserve); raise %s or start fewer: %w",
				n, l.name, limit, threads, pidsPerContainer, need, max(free, 0), pidReserve(limit), l.name, ErrHostLimit)
		}
	}
	for _, ns := range []string{"pid", "ipc", "uts", "mnt", "net"} {
		key := "user.max_" + ns + "_namespaces"
		limit, ok := readInt(filepath.Join(proc, "sys/user", "max_"+ns+"_namespaces"))
		if ok && existing+n > limit {
			return fmt.Errorf("start %d containers: %s is %d and %d containers exist: each has its own %s namespace; raise %s or start fewer: %w",
				n, key, limit, existing, ns, key, ErrHostLimit)
		}
	}
	return nil
}

func readInt(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return v, err == nil
}
