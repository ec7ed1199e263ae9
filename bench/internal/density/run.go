package density

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSkipped marks a runtime that cannot run here (not installed, daemon
// does not start): it is reported as skipped, never faked.
var ErrSkipped = errors.New("skipped")

// Driver starts and removes containers of one runtime.
type Driver interface {
	// Name is the runtime's name in the report ("pirun", "docker", …).
	Name() string
	// Subnet is the bridge subnet the containers get addresses from; the
	// harness only sends requests into it.
	Subnet() netip.Prefix
	// Bridge is the bridge's interface name.
	Bridge() string
	// HelperNames are the process names of the runtime's helpers
	// (daemons, shims, monitors, proxies).
	HelperNames() []string
	// StateDirs are the directories the runtime keeps containers under;
	// mounts left under them after teardown are leftovers.
	StateDirs() []string
	// Setup makes the runtime ready for one run: daemon, image, network.
	// An error wrapping ErrSkipped means the runtime is not available.
	Setup(ctx context.Context) error
	// Start starts n containers, calling started for each one as soon as
	// it is started, and stops early when ctx is done. It returns how many
	// failed to start and the first error.
	Start(ctx context.Context, n int, started func(id, ip string)) (failed int, err error)
	// Remove force-removes containers.
	Remove(ctx context.Context, ids []string) error
	// Count is the number of containers the runtime still knows.
	Count(ctx context.Context) (int, error)
	// Teardown undoes Setup, removing whatever containers of the harness
	// remain (network, daemon).
	Teardown(ctx context.Context) error
	// Close removes what the driver keeps between runs (images, state
	// directories).
	Close(ctx context.Context) error
}

// Run is one measurement: one runtime, N containers.
type Run struct {
	Runtime string    `json:"runtime"`
	N       int       `json:"n"`
	Rep     int       `json:"rep"`
	Time    time.Time `json:"time"`
	Skipped string    `json:"skipped,omitempty"`
	Note    string    `json:"note,omitempty"`
	Error   string    `json:"error,omitempty"`

	Started     int  `json:"started"`
	StartFailed int  `json:"start_failed"`
	TimedOut    bool `json:"timed_out"`
	Answered    int  `json:"answered"`
	// StartCmdsS: seconds until the last start command returned.
	StartCmdsS float64 `json:"start_cmds_s"`
	// AllAnsweringS: seconds from the first start until the last container
	// answered HTTP (all N when Answered == N).
	AllAnsweringS float64 `json:"all_answering_s"`
	// Rate: containers answering per second (Answered / AllAnsweringS).
	Rate float64 `json:"rate_per_s"`

	MemBefore Meminfo `json:"meminfo_before_kb"`
	MemAfter  Meminfo `json:"meminfo_after_kb"`
	// Per container, kB: the MemAvailable drop and its parts.
	MemPerCtr        float64 `json:"mem_kb_per_ctr"`
	SlabPerCtr       float64 `json:"slab_kb_per_ctr"`
	KernelStackPerCt float64 `json:"kernel_stack_kb_per_ctr"`
	PageTablesPerCtr float64 `json:"page_tables_kb_per_ctr"`
	HelperPSSPerCtr  float64 `json:"helper_pss_kb_per_ctr"`
	CtrPSSPerCtr     float64 `json:"ctr_pss_kb_per_ctr"`

	HelpersBefore Helpers `json:"helpers_before"`
	HelpersAfter  Helpers `json:"helpers_after"`
	HelpersPerCtr float64 `json:"helpers_per_ctr"`

	TeardownS float64   `json:"teardown_s"`
	Leftovers Leftovers `json:"leftovers"`
}

// Leftovers is what remains right after the runtime's teardown of the
// containers, before the harness cleans up on its own.
type Leftovers struct {
	Containers  int `json:"containers"`   // still listed by the runtime
	Processes   int `json:"processes"`    // still running in the containers' cgroups
	BridgePorts int `json:"bridge_ports"` // veths still on the bridge (-1: no bridge)
	Mounts      int `json:"mounts"`       // more mounts under the runtime's state directories than before
	Helpers     int `json:"helpers"`      // helper processes beyond those before the start
	// HelpersBy names them: process name → how many more than before.
	HelpersBy map[string]int `json:"helpers_by,omitempty"`
}

// Options are the knobs of one measurement.
type Options struct {
	// Budget bounds the start of the N containers; those started by then
	// are measured and the rest reported as not started.
	Budget time.Duration
	// AnswerGrace is how long after the last start the containers have to
	// answer.
	AnswerGrace time.Duration
	// Log receives progress lines (nil: discard).
	Log io.Writer
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// Measure runs one measurement of d with n containers. Setup errors
// wrapping ErrSkipped give a run marked skipped. Whatever happens, the
// containers are removed and d's Teardown runs before Measure returns.
func Measure(ctx context.Context, d Driver, n, rep int, o Options) (run Run) {
	run = Run{Runtime: d.Name(), N: n, Rep: rep, Time: time.Now().UTC()}
	cleanupCtx := context.WithoutCancel(ctx)
	if err := d.Setup(ctx); err != nil {
		if errors.Is(err, ErrSkipped) {
			run.Skipped = err.Error()
		} else {
			run.Error = "setup: " + err.Error()
		}
		tctx, cancel := context.WithTimeout(cleanupCtx, 5*time.Minute)
		defer cancel()
		if terr := d.Teardown(tctx); terr != nil {
			run.Error += "; teardown: " + terr.Error()
		}
		return run
	}
	if n, ok := d.(interface{ Note() string }); ok {
		run.Note = n.Note()
	}
	defer func() {
		tctx, cancel := context.WithTimeout(cleanupCtx, 15*time.Minute)
		defer cancel()
		if err := d.Teardown(tctx); err != nil {
			run.Error = joinErr(run.Error, "teardown: "+err.Error())
		}
	}()

	var mu sync.Mutex
	var ids []string
	idSet := map[string]bool{}
	// Remove whatever started, on every path; the timed removal below
	// normally leaves nothing for this one to do.
	defer func() {
		mu.Lock()
		left := ids
		mu.Unlock()
		if len(left) > 0 {
			rctx, cancel := context.WithTimeout(cleanupCtx, 15*time.Minute)
			defer cancel()
			_ = d.Remove(rctx, left)
		}
	}()

	time.Sleep(3 * time.Second) // a daemon just started settles
	before, err := settledMeminfo()
	if err != nil {
		run.Error = err.Error()
		return run
	}
	run.MemBefore = before
	run.HelpersBefore = helperSnapshot(d.HelperNames(), nil)
	mountsBefore := stateMounts(d)

	o.logf("%s N=%d rep %d: starting (budget %s)", d.Name(), n, rep, o.Budget)
	t0 := time.Now()
	startCtx, cancelStart := context.WithTimeout(ctx, o.Budget)
	defer cancelStart()
	pollCtx, cancelPoll := context.WithTimeout(ctx, o.Budget+o.AnswerGrace)
	defer cancelPoll()
	p := newPoller(pollCtx, d.Subnet(), t0, n)
	failed, serr := d.Start(startCtx, n, func(id, ip string) {
		mu.Lock()
		ids = append(ids, id)
		idSet[id] = true
		mu.Unlock()
		p.add(ip)
	})
	run.StartCmdsS = time.Since(t0).Seconds()
	run.TimedOut = startCtx.Err() != nil
	cancelStart()
	mu.Lock()
	run.Started = len(ids)
	mu.Unlock()
	run.StartFailed = failed
	if serr != nil {
		run.Error = "start: " + serr.Error()
	}
	// The answers get AnswerGrace after the last start, at most.
	graceCtx, cancelGrace := context.WithTimeout(pollCtx, o.AnswerGrace)
	defer cancelGrace()
	go func() { <-graceCtx.Done(); cancelPoll() }()
	answered, last := p.wait()
	run.Answered = answered
	run.AllAnsweringS = last.Seconds()
	if last > 0 {
		run.Rate = float64(answered) / last.Seconds()
	}
	o.logf("%s N=%d rep %d: %d started (%d failed), %d answered in %.1fs (%.2f/s)",
		d.Name(), n, rep, run.Started, failed, answered, run.AllAnsweringS, run.Rate)

	if run.Started > 0 {
		time.Sleep(2 * time.Second) // let the last starts settle
		after, err := settledMeminfo()
		if err != nil {
			run.Error = joinErr(run.Error, err.Error())
			return run
		}
		run.MemAfter = after
		run.HelpersAfter = helperSnapshot(d.HelperNames(), idSet)
		per := func(field string) float64 {
			return float64(after[field]-before[field]) / float64(run.Started)
		}
		run.MemPerCtr = float64(before["MemAvailable"]-after["MemAvailable"]) / float64(run.Started)
		run.SlabPerCtr = per("Slab")
		run.KernelStackPerCt = per("KernelStack")
		run.PageTablesPerCtr = per("PageTables")
		run.HelperPSSPerCtr = float64(run.HelpersAfter.PSSkB-run.HelpersBefore.PSSkB) / float64(run.Started)
		run.CtrPSSPerCtr = float64(run.HelpersAfter.CtrPSS) / float64(run.Started)
		run.HelpersPerCtr = float64(run.HelpersAfter.Count-run.HelpersBefore.Count) / float64(run.Started)
		o.logf("%s N=%d rep %d: %.0f kB/container, %.2f helpers/container", d.Name(), n, rep, run.MemPerCtr, run.HelpersPerCtr)
	}

	mu.Lock()
	all := append([]string(nil), ids...)
	mu.Unlock()
	t1 := time.Now()
	rctx, cancel := context.WithTimeout(cleanupCtx, max(2*o.Budget, 5*time.Minute))
	rerr := d.Remove(rctx, all)
	cancel()
	run.TeardownS = time.Since(t1).Seconds()
	if rerr != nil {
		run.Error = joinErr(run.Error, "remove: "+rerr.Error())
	} else {
		mu.Lock()
		ids = nil
		mu.Unlock()
	}
	time.Sleep(time.Second)
	run.Leftovers = leftovers(cleanupCtx, d, idSet, run.HelpersBefore, mountsBefore)
	o.logf("%s N=%d rep %d: removed in %.1fs, leftovers %+v", d.Name(), n, rep, run.TeardownS, run.Leftovers)
	return run
}

func stateMounts(d Driver) int {
	n := 0
	for _, dir := range d.StateDirs() {
		n += len(mountsUnder(dir))
	}
	return n
}

func leftovers(ctx context.Context, d Driver, ids map[string]bool, before Helpers, mountsBefore int) Leftovers {
	l := Leftovers{Containers: -1}
	if c, err := d.Count(ctx); err == nil {
		l.Containers = c
	}
	l.Processes = containerProcs(ids)
	l.BridgePorts = bridgePorts(d.Bridge())
	l.Mounts = max(0, stateMounts(d)-mountsBefore)
	h := helperSnapshot(d.HelperNames(), nil)
	for comm, n := range h.ByComm {
		if more := n - before.ByComm[comm]; more > 0 {
			if l.HelpersBy == nil {
				l.HelpersBy = map[string]int{}
			}
			l.HelpersBy[comm] = more
			l.Helpers += more
		}
	}
	return l
}

func joinErr(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// removeDir unmounts whatever is mounted under dir (deepest first) and
// removes it. It leaves dir in place if a mount cannot be undone.
func removeDir(dir string) error {
	for _, m := range mountsUnder(dir) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	return os.RemoveAll(dir)
}
