package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/runc/libcontainer"
)

// Restart policies of Config.Restart.
const (
	// RestartNo: an exited container stays exited (default). Nothing
	// resident watches it.
	RestartNo = "no"
	// RestartOnFailure restarts a container whose init exits with a
	// non-zero status or is killed (an OOM kill among them).
	RestartOnFailure = "on-failure"
	// RestartAlways restarts a container whenever its init exits.
	RestartAlways = "always"
)

// Restart back-off: the first restart waits minBackoff, each following one
// twice as long up to maxBackoff; a run that lasted resetAfter starts the
// count again (Docker's numbers).
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
	resetAfter = 10 * time.Second
)

// supervisor is the set of containers that this process started with a
// restart policy, and watches.
type supervisor struct {
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (s *supervisor) init() {
	s.once.Do(func() { s.ctx, s.cancel = context.WithCancel(context.Background()) })
}

// errGone says a supervised container was stopped or removed by a user:
// it is not restarted.
var errGone = errors.New("stopped or removed")

// supervise starts watching the containers of a spawn with a restart
// policy. They are children of this process (libcontainer forks their
// inits from it), so it reaps them; it records each exit in the
// container's record and restarts it as the policy says, with a back-off,
// until a user stops or removes it.
func (r *Runtime) supervise(g *group, cs []*started) {
	r.sup.init()
	for _, c := range cs {
		r.sup.wg.Add(1)
		go r.superviseOne(g, c)
	}
}

// Supervise blocks while containers started by this Runtime with a restart
// policy (Config.Restart) remain to be watched: it returns nil once each has
// been stopped or removed, or exited for good under its policy. Cancelling
// ctx ends the supervision and returns ctx's error; the containers keep
// running, unsupervised, and stay removable. A program that spawns with a
// restart policy must call it, and live, for restarts to happen: `pirun
// spawn --restart` runs one supervisor process per spawn group for this.
func (r *Runtime) Supervise(ctx context.Context) error {
	r.sup.init()
	done := make(chan struct{})
	go func() {
		r.sup.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		r.sup.cancel()
		return ctx.Err()
	}
}

func (r *Runtime) superviseOne(g *group, c *started) {
	defer r.sup.wg.Done()
	ctx := r.sup.ctx
	backoff := minBackoff
	for {
		select {
		case <-c.watch.done:
		case <-ctx.Done():
			return
		}
		if time.Since(c.Started) >= resetAfter {
			backoff = minBackoff
		}
		restart, err := r.recordExit(c, c.watch.code, g.cfg.Restart)
		if err != nil {
			r.log.Warn("supervisor: record exit", "container", c.Name, "error", err)
		}
		if !restart {
			return
		}
		// Restart, retrying a failed start after the next back-off.
		for {
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, maxBackoff)
			err := r.restartOne(ctx, g, c)
			if err == nil {
				break
			}
			if errors.Is(err, errGone) || errors.Is(err, ErrNotFound) || ctx.Err() != nil {
				return
			}
			r.log.Warn("supervisor: restart failed; retrying", "container", c.Name, "error", err, "in", backoff)
		}
	}
}

// recordExit writes an exit into c's record and reports whether policy
// restarts it. A container that a user stopped or removed is not restarted.
func (r *Runtime) recordExit(c *started, code int, policy string) (bool, error) {
	unlock, err := r.st.lock(c.ID)
	if err != nil {
		return false, err
	}
	defer unlock()
	rec, err := r.st.read(c.ID)
	if err != nil {
		return false, err // removed
	}
	rec.ExitCode = &code
	restart := !rec.StopRequested && (policy == RestartAlways || policy == RestartOnFailure && code != 0)
	if err := r.st.write(rec); err != nil {
		return false, err
	}
	r.log.Info("container exited", "container", rec.Name, "code", code, "restart", restart)
	return restart, nil
}

// restartOne starts c again: same id, name, address and cgroup path; a new
// init in new namespaces.
func (r *Runtime) restartOne(ctx context.Context, g *group, c *started) error {
	unlock, err := r.st.lock(c.ID)
	if err != nil {
		return err
	}
	rec, err := r.st.read(c.ID)
	if err != nil || rec.StopRequested {
		unlock()
		return errGone
	}
	// The old init's libcontainer state and cgroup go first.
	if ct, err := libcontainer.Load(r.st.runcRoot(), c.ID); err == nil {
		if err := ct.Destroy(); err != nil {
			unlock()
			return fmt.Errorf("container %s: remove the exited run: %w", rec.Name, err)
		}
	}
	rec.Phase, rec.Pid, rec.PidStart = phaseCreating, 0, 0
	if err := r.st.write(rec); err != nil {
		unlock()
		return err
	}
	unlock()
	c.Container = *rec
	if err := r.startOne(ctx, g, c, nil); err != nil {
		return err
	}
	if err := r.reattachPorts(ctx, g, c); err != nil {
		return err
	}
	// Counted once the new init runs; startOne wrote the record.
	unlock, err = r.st.lock(c.ID)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err = r.st.read(c.ID)
	if err != nil {
		return errGone
	}
	rec.Restarts++
	c.Restarts = rec.Restarts
	return r.st.write(rec)
}

// markStopping records, before a user's stop or rm signals them, that the
// supervised containers among cs must not be restarted.
func (r *Runtime) markStopping(cs []*Container) {
	for _, c := range cs {
		if c.Restart == "" || c.Restart == RestartNo || c.StopRequested {
			continue
		}
		unlock, err := r.st.lock(c.ID)
		if err != nil {
			continue
		}
		if rec, err := r.st.read(c.ID); err == nil {
			rec.StopRequested = true
			_ = r.st.write(rec)
			c.StopRequested = true
		}
		unlock()
	}
}
