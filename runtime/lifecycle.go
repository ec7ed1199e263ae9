package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/network"
)

// killWait is how long SIGKILLed inits may take to be gone: 10 s, and 10 ms
// more for each, because the kernel tears their namespaces and mounts down
// one after the other (10,000 at once took over a minute here).
func killWait(n int) time.Duration { return 10*time.Second + time.Duration(n)*10*time.Millisecond }

// Stop stops the containers with the given ids: SIGTERM, then SIGKILL for
// those still running after timeout (busybox httpd as PID 1 ignores
// SIGTERM). All are signalled at once, so stopping many takes about one
// timeout, not one per container. Stopping a stopped container succeeds.
func (r *Runtime) Stop(ctx context.Context, ids []string, timeout time.Duration) error {
	// A supervised container waiting to be restarted is stopped too.
	r.markStopping(r.records(ids))
	procs, errs := r.openRunning(ids)
	defer closeAll(procs)
	if len(procs) == 0 {
		return errors.Join(errs...)
	}
	signalAll(procs, unix.SIGTERM)
	left := waitProcs(ctx, procs, timeout)
	if len(left) > 0 {
		signalAll(left, unix.SIGKILL)
		wait := killWait(len(left))
		for _, p := range waitProcs(ctx, left, wait) {
			errs = append(errs, fmt.Errorf("container %s: still running %s after SIGKILL", p.c.Name, wait))
		}
	}
	return errors.Join(errs...)
}

// Remove removes the containers with the given ids: their cgroups,
// libcontainer state, network addresses, names, logs and records. A running
// container is refused with ErrRunning unless force, which kills it first.
// Containers that are half-made (a pirun killed while starting them) are
// removed too. Removing continues past failures; the errors are joined.
func (r *Runtime) Remove(ctx context.Context, ids []string, force bool) error {
	return r.removeIDs(ctx, ids, force)
}

type proc struct {
	c  *Container
	fd int
}

// records reads the records of ids, skipping those that cannot be read.
func (r *Runtime) records(ids []string) []*Container {
	var cs []*Container
	for _, id := range ids {
		if c, err := r.st.read(id); err == nil {
			cs = append(cs, c)
		}
	}
	return cs
}

// reread returns c's record as it is now, or c if it cannot be read.
func (r *Runtime) reread(c *Container) *Container {
	if n, err := r.st.read(c.ID); err == nil {
		return n
	}
	return c
}

func closeAll(ps []proc) {
	for _, p := range ps {
		unix.Close(p.fd)
	}
}

// openRunning opens a pidfd on the init of each running container.
func (r *Runtime) openRunning(ids []string) ([]proc, []error) {
	var ps []proc
	var errs []error
	for _, id := range ids {
		c, err := r.st.read(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p, ok := r.openInit(c); ok {
			ps = append(ps, p)
		}
	}
	return ps, errs
}

// openInit returns a pidfd on c's init if it runs. A half-made container
// has no pid in its record; libcontainer's state may still know one.
func (r *Runtime) openInit(c *Container) (proc, bool) {
	pid, start := c.Pid, c.PidStart
	if c.Phase != phaseStarted {
		if st, err := libcontainerState(r.st.runcRoot(), c.ID); err == nil {
			pid, start = st.InitProcessPid, st.InitProcessStartTime
		}
	}
	fd, err := openProcess(pid, start)
	if err != nil {
		return proc{}, false
	}
	return proc{c: c, fd: fd}, true
}

func libcontainerState(root, id string) (*libcontainer.State, error) {
	ct, err := libcontainer.Load(root, id)
	if err != nil {
		return nil, err
	}
	return ct.State()
}

func signalAll(ps []proc, sig unix.Signal) {
	for _, p := range ps {
		_ = unix.PidfdSendSignal(p.fd, sig, nil, 0)
	}
}

// waitProcs waits up to d for the processes to exit and returns those
// still running.
func waitProcs(ctx context.Context, ps []proc, d time.Duration) []proc {
	deadline := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	fds := make([]int, len(ps))
	byFD := make(map[int]proc, len(ps))
	for i, p := range ps {
		fds[i] = p.fd
		byFD[p.fd] = p
	}
	var left []proc
	for _, fd := range waitExited(fds, deadline) {
		left = append(left, byFD[fd])
	}
	return left
}

func (r *Runtime) removeIDs(ctx context.Context, ids []string, force bool) error {
	var (
		mu   sync.Mutex
		errs []error
		eps  []network.Endpoint
	)
	addErr := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}

	running := func(c *Container) bool {
		p, ok := r.openInit(c)
		if ok {
			unix.Close(p.fd)
		}
		return ok
	}
	var keep []string
	var kept []*Container
	for _, id := range ids {
		c, err := r.st.read(id)
		if errors.Is(err, ErrNotFound) {
			if _, serr := os.Stat(r.st.containerDir(id)); serr != nil {
				continue // gone already: removing it again succeeds
			}
			c = &Container{ID: id, CgroupPath: cgroupPath(id)}
		} else if err != nil {
			addErr(err)
			continue
		}
		if !force && running(c) {
			addErr(fmt.Errorf("container %s: %w (stop it first, or force)", c.Name, ErrRunning))
			continue
		}
		keep = append(keep, id)
		kept = append(kept, c)
	}
	// Out of their published ports before they die, so that no new
	// connection goes to them; if that fails, nothing is removed.
	if err := r.unpublish(ctx, kept); err != nil {
		return errors.Join(append(errs, err)...)
	}
	// No supervisor restarts them from here on: a restart under way when
	// the mark is written has finished (it holds the container's lock), so
	// the inits opened below include the one it started.
	r.markStopping(kept)

	// Kill, all at once, so the waits overlap.
	var victims []proc
	for _, c := range kept {
		// Without force, one running now was restarted by its supervisor
		// after the check above: the user removed it stopped; it goes.
		if p, ok := r.openInit(r.reread(c)); ok {
			victims = append(victims, p)
		}
	}
	signalAll(victims, unix.SIGKILL)
	wait := killWait(len(victims))
	for _, p := range waitProcs(ctx, victims, wait) {
		addErr(fmt.Errorf("container %s: still running %s after SIGKILL", p.c.Name, wait))
		keep = remove(keep, p.c.ID)
	}
	closeAll(victims)

	// Tear down in parallel; a failure keeps the record for a later rm.
	var torn []*Container
	parallel(r.workers, keep, func(id string) {
		c, err := r.teardown(id)
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, ErrNotFound) {
			return // removed meanwhile by another pirun
		}
		if err != nil {
			errs = append(errs, err)
			return
		}
		torn = append(torn, c)
		switch {
		case c.Endpoint != nil:
			eps = append(eps, *c.Endpoint)
		case c.Network != NetworkNone && c.Network != NetworkHost:
			// pirun died before it recorded the address: the network
			// finds it by the container's id.
			eps = append(eps, network.Endpoint{ContainerID: c.ID})
		}
	})

	// One network call (one lock hold) per network for all the addresses.
	if len(eps) > 0 {
		if err := r.releaseEndpoints(ctx, eps); err != nil {
			// Keep the records: rm again releases what is left.
			return errors.Join(append(errs, err)...)
		}
	}
	// Last, the records and names, then the group cgroups left empty.
	groups := map[string]bool{}
	for _, c := range torn {
		if err := r.forget(c); err != nil {
			errs = append(errs, err)
			continue
		}
		if c.CgroupGroup != "" {
			groups[c.CgroupGroup] = true
		}
	}
	if len(groups) > 0 {
		if err := r.releaseGroupCgroups(groups); err != nil {
			errs = append(errs, err)
		}
	}
	if ids, err := r.st.ids(); err == nil && len(ids) == 0 {
		removeCgroupParents()
	}
	return errors.Join(errs...)
}

// parallel calls f for every item, with at most n at once.
func parallel[T any](n int, items []T, f func(T)) {
	work := make(chan T)
	var wg sync.WaitGroup
	for range min(n, max(len(items), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				f(it)
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
}

func remove(ids []string, id string) []string {
	for i, x := range ids {
		if x == id {
			return append(ids[:i], ids[i+1:]...)
		}
	}
	return ids
}

// teardown removes what one stopped container holds in the kernel and in
// libcontainer's state, and returns its record; its address, name and
// record stay until the caller has released the address.
func (r *Runtime) teardown(id string) (*Container, error) {
	unlock, err := r.st.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	c, err := r.st.read(id)
	if errors.Is(err, ErrNotFound) {
		c = &Container{ID: id, CgroupPath: cgroupPath(id)}
	} else if err != nil {
		return nil, err
	}
	if ct, err := libcontainer.Load(r.st.runcRoot(), id); err == nil {
		if err := ct.Destroy(); err != nil {
			return nil, fmt.Errorf("container %s: %w", c.displayName(), err)
		}
		return c, nil
	}
	// No usable libcontainer state: pirun died while creating the
	// container. Remove what libcontainer may have made.
	if err := destroyCgroup(c.CgroupPath); err != nil {
		return nil, fmt.Errorf("container %s: remove cgroup %s: %w", c.displayName(), c.CgroupPath, err)
	}
	if err := os.RemoveAll(filepath.Join(r.st.runcRoot(), id)); err != nil {
		return nil, fmt.Errorf("container %s: %w", c.displayName(), err)
	}
	return c, nil
}

// forget removes a torn-down container's name and directory (record, log).
func (r *Runtime) forget(c *Container) error {
	unlock, err := r.st.lock(c.ID)
	if errors.Is(err, ErrNotFound) {
		// Removed meanwhile by another pirun's rm: at most its name is left.
		unlock = func() {}
	} else if err != nil {
		return err
	}
	defer unlock()
	if c.Name != "" {
		if err := r.st.releaseName(c.Name, c.ID); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(r.st.containerDir(c.ID)); err != nil {
		return fmt.Errorf("container %s: remove state: %w", c.displayName(), err)
	}
	return nil
}

func (c *Container) displayName() string {
	if c.Name != "" {
		return c.Name
	}
	return shortID(c.ID)
}

// destroyCgroup removes a container's cgroup in every hierarchy, if any.
func destroyCgroup(path string) error {
	if path == "" {
		return nil
	}
	m, err := manager.New(&cgroups.Cgroup{Path: path, Resources: &cgroups.Resources{}})
	if err != nil {
		return err
	}
	return m.Destroy()
}

// removeCgroupParents removes the empty /pirun parent cgroup from every
// hierarchy once no container is left, so pirun leaves no trace in
// /sys/fs/cgroup. A parent that is not empty (another pirun process started
// a container meanwhile) stays.
func removeCgroupParents() {
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return
	}
	for _, m := range mounts {
		_ = unix.Rmdir(filepath.Join(m.Mountpoint, cgroupParent))
	}
}
