package density

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// command runs a program and returns its trimmed stdout; the error carries
// the tail of its stderr.
func command(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 300 {
			msg = "…" + msg[len(msg)-300:]
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, firstArgs(args), err, msg)
	}
	return strings.TrimSpace(stdout.String()), nil
}

func firstArgs(args []string) string {
	if len(args) > 3 {
		return strings.Join(args[:3], " ") + " …"
	}
	return strings.Join(args, " ")
}

// Starters is how many containers the CLI drivers start at once, like the
// earlier shell harness.
const Starters = 4

// maxConsecutiveFailures stops a start loop that only fails.
const maxConsecutiveFailures = 20

// startParallel calls start for 0..n-1 from Starters goroutines until all
// are done, ctx is done, or maxConsecutiveFailures starts in a row failed.
func startParallel(ctx context.Context, n int, start func(ctx context.Context, i int) error) (failed int, firstErr error) {
	var next, fails, streak atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	for range Starters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && streak.Load() < maxConsecutiveFailures {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := start(ctx, i); err != nil {
					if ctx.Err() != nil {
						return // cut by the budget: not a failure of the runtime
					}
					fails.Add(1)
					streak.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				streak.Store(0)
			}
		}()
	}
	wg.Wait()
	if streak.Load() >= maxConsecutiveFailures {
		firstErr = fmt.Errorf("%d starts in a row failed, gave up: %w", maxConsecutiveFailures, firstErr)
	}
	return int(fails.Load()), firstErr
}

// removeParallel removes ids in batches from Starters goroutines.
func removeParallel(ctx context.Context, ids []string, batch int, rm func(ctx context.Context, ids []string) error) error {
	work := make(chan []string)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range Starters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				if err := rm(ctx, b); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < len(ids); i += batch {
		work <- ids[i:min(i+batch, len(ids))]
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}

// nthAddr is the address of container i in subnet: .10 onwards, clear of
// the gateway.
func nthAddr(subnet netip.Prefix, i int) netip.Addr {
	a := subnet.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += 10 + uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// lookPath finds the first of names on PATH, or returns ErrSkipped.
func lookPath(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not installed (make bench-deps): %w", names[len(names)-1], ErrSkipped)
}
