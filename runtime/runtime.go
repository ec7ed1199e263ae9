package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/network"
)

// Network modes.
const (
	NetworkBridge  = "bridge"  // own namespace, veth on the pirun bridge (default)
	NetworkMacvlan = "macvlan" // own namespace, macvlan on Config.Macvlan.Parent
	NetworkHost    = "host"    // the host's network namespace
	NetworkNone    = "none"    // own namespace with only lo
)

// Runtime manages the containers of one state directory. It is safe for
// concurrent use, and so are several processes sharing a state directory.
type Runtime struct {
	st      store
	images  *image.Store
	log     *slog.Logger
	workers int
	netOpts []network.Option
	grace   time.Duration

	netOnce sync.Once
	bridge  *network.Bridge
	netErr  error
	drivers netDrivers

	sup supervisor
}

// Option configures a Runtime.
type Option func(*Runtime)

// WithLogger sets the logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(r *Runtime) { r.log = l } }

// WithWorkers sets how many containers start (or stop) at once.
// Default: 2 per CPU.
func WithWorkers(n int) Option {
	return func(r *Runtime) {
		if n > 0 {
			r.workers = n
		}
	}
}

// WithNetworkOptions passes options to the bridge network (name, subnet).
// Default: the network package's defaults (pirun0, 10.123.0.0/16).
func WithNetworkOptions(opts ...network.Option) Option {
	return func(r *Runtime) { r.netOpts = append(r.netOpts, opts...) }
}

// WithStartGrace sets how long after the last start of a detached spawn
// every container must still run; one that has exited by then fails the
// spawn (ErrExited). Default: 100ms.
func WithStartGrace(d time.Duration) Option { return func(r *Runtime) { r.grace = d } }

// New returns a Runtime keeping its state under stateDir (pirun's default
// is /run/pirun) and taking images from images.
func New(stateDir string, images *image.Store, opts ...Option) (*Runtime, error) {
	if stateDir == "" {
		return nil, fmt.Errorf("state directory: %w: empty path", ErrInvalidConfig)
	}
	if images == nil {
		return nil, fmt.Errorf("image store: %w: nil", ErrInvalidConfig)
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state directory %q: %w", stateDir, err)
	}
	r := &Runtime{
		st:      store{dir: abs},
		images:  images,
		log:     slog.New(slog.DiscardHandler),
		workers: 2 * goruntime.NumCPU(),
		grace:   100 * time.Millisecond,
	}
	for _, o := range opts {
		o(r)
	}
	if err := r.st.init(); err != nil {
		return nil, err
	}
	// libcontainer logs through logrus; keep it off stderr.
	logrus.SetOutput(logWriter{r.log})
	// The cgroups package opens /sys/fs/cgroup once and keeps the handle.
	// Open it here, in the host's mount namespace: opened first from a
	// launcher thread, it would die with that thread's private namespace.
	if f, err := cgroups.OpenFile("/sys/fs/cgroup", "cgroup.procs", os.O_RDONLY); err == nil {
		f.Close()
	}
	return r, nil
}

// logWriter forwards libcontainer's logrus lines to the runtime's logger.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "from", "libcontainer")
	return len(p), nil
}

// StateDir is the runtime's state directory.
func (r *Runtime) StateDir() string { return r.st.dir }

func (r *Runtime) network() (*network.Bridge, error) {
	r.netOnce.Do(func() {
		r.bridge, r.netErr = network.NewBridge(r.st.networkDir(), r.netOpts...)
	})
	return r.bridge, r.netErr
}

// Config describes the containers to start.
type Config struct {
	// Image is a name, digest or id in the image store.
	Image string
	// Name is the container's name for Start and Run (default: derived
	// from the image), and the prefix of the names for Spawn, whose
	// containers are named PREFIX-1, PREFIX-2, … skipping names in use.
	Name string
	// Cmd replaces the image's command (its entrypoint stays).
	Cmd []string
	// Env adds to or overrides the image's environment (KEY=VALUE).
	Env []string
	// Network is NetworkBridge (default), NetworkMacvlan, NetworkHost or
	// NetworkNone (see netdriver.go).
	Network string
	// Macvlan is the macvlan network's parent interface (required) and,
	// optionally, its subnet and gateway (see network.MacvlanConfig);
	// Network = NetworkMacvlan only.
	Macvlan network.MacvlanConfig
	// Resources limit each container (default: none), or with Cgroup =
	// CgroupGroup the whole spawn group together.
	Resources Resources
	// Cgroup is CgroupContainer (default: limits apply to each container)
	// or CgroupGroup (the containers of one Spawn share one group cgroup
	// that carries the limits for all of them together).
	Cgroup string
	// Seccomp is SeccompDefault (Docker's default profile, where the build
	// supports seccomp: see SeccompSupported) or SeccompUnconfined (none).
	Seccomp string
	// Restart is the restart policy of detached containers: RestartNo
	// (default), RestartOnFailure or RestartAlways. Restarts happen while
	// the process that started them runs Supervise.
	Restart string
	// CapAdd and CapDrop change Docker's default capability set ("NET_ADMIN",
	// "CAP_NET_RAW", "ALL"). Default: the set unchanged.
	CapAdd, CapDrop []string
	// Devices are host device nodes made available in the containers.
	Devices []Device
	// Ports are published on the host once all the containers run: each
	// host port spreads its connections over all of them, in the kernel
	// (see the network package). Bridge network only. Default: none.
	Ports []network.PortMapping
}

func (c *Config) validate() error {
	if err := c.validateNetwork(); err != nil {
		return err
	}
	if len(c.Ports) > 0 && c.Network != NetworkBridge {
		return fmt.Errorf("publish ports with network %q: %w: ports need the bridge network", c.Network, ErrInvalidConfig)
	}
	if err := network.CheckPortMappings(c.Ports); err != nil {
		return err
	}
	if c.Name != "" {
		if err := ValidateName(c.Name); err != nil {
			return err
		}
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("environment variable %q: %w: use KEY=VALUE", kv, ErrInvalidConfig)
		}
	}
	if c.Image == "" {
		return fmt.Errorf("image: %w: empty", ErrInvalidConfig)
	}
	switch c.Cgroup {
	case "":
		c.Cgroup = CgroupContainer
	case CgroupContainer, CgroupGroup:
	default:
		return fmt.Errorf("cgroup mode %q: %w: use %q or %q", c.Cgroup, ErrInvalidConfig, CgroupContainer, CgroupGroup)
	}
	switch c.Seccomp {
	case "":
		c.Seccomp = SeccompDefault
	case SeccompDefault, SeccompUnconfined:
	default:
		return fmt.Errorf("seccomp %q: %w: use %q or %q", c.Seccomp, ErrInvalidConfig, SeccompDefault, SeccompUnconfined)
	}
	switch c.Restart {
	case "":
		c.Restart = RestartNo
	case RestartNo, RestartOnFailure, RestartAlways:
	default:
		return fmt.Errorf("restart policy %q: %w: use %q, %q or %q", c.Restart, ErrInvalidConfig, RestartNo, RestartOnFailure, RestartAlways)
	}
	return c.Resources.validate()
}

// group is the work done once for all the containers of one start: image
// lookup, mount spec and configuration template.
type group struct {
	cfg   Config
	img   *image.Image
	mount image.Mount
	// shared is the group's one overlay superblock (nil: a mount per
	// container); close releases it once the group starts no more.
	shared *sharedRootfs
	tmpl   *template
	drv    network.Driver  // nil for the host network and none
	net    *network.Bridge // drv, on the bridge network (ports need it)
}

func (r *Runtime) prepare(ctx context.Context, cfg Config) (*group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	img, err := r.images.Lookup(ctx, cfg.Image)
	if err != nil {
		return nil, err
	}
	m, err := r.images.RootfsMount(img)
	if err != nil {
		return nil, err
	}
	caps, err := capSet(cfg.CapAdd, cfg.CapDrop)
	if err != nil {
		return nil, err
	}
	res := cfg.Resources
	if cfg.Cgroup == CgroupGroup {
		res = Resources{} // the group's cgroup carries the limits
	}
	tmpl, err := newTemplate(img, lowerdirs(m), &cfg, res, caps)
	if err != nil {
		return nil, err
	}
	g := &group{cfg: cfg, img: img, mount: m, tmpl: tmpl}
	if g.shared, err = newSharedRootfs(m); err != nil {
		r.log.Debug("a rootfs mount per container", "image", img.Name, "reason", err)
	}
	if g.drv, err = r.driver(&cfg); err != nil {
		g.close()
		return nil, err
	}
	g.net, _ = g.drv.(*network.Bridge)
	return g, nil
}

// close releases the group's detached rootfs mount; the containers keep
// their clones of it.
func (g *group) close() {
	if g.shared != nil {
		g.shared.f.Close()
	}
}

// lowerdirs returns the lowerdirs of an overlay mount spec, top first.
func lowerdirs(m image.Mount) []string {
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(v, ":")
		}
	}
	return nil
}

// defaultPrefix derives a name prefix from an image name:
// docker.io/library/rpi-busybox-httpd:latest → rpi-busybox-httpd.
func defaultPrefix(imageName string) string {
	base := path.Base(imageName)
	if i := strings.IndexAny(base, ":@"); i >= 0 {
		base = base[:i]
	}
	var b strings.Builder
	for _, r := range base {
		if r < 128 && (r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	s := strings.TrimLeft(b.String(), "-_.")
	if s == "" {
		s = "pirun"
	}
	if len(s) > MaxNameLen-7 {
		s = s[:MaxNameLen-7]
	}
	return s
}

// Start starts one detached container and returns its record.
func (r *Runtime) Start(ctx context.Context, cfg Config) (*Container, error) {
	cs, err := r.spawn(ctx, cfg, 1, true, nil, nil)
	if err != nil {
		return nil, err
	}
	return cs[0].clone(), nil
}

// Spawn starts n detached replicas of cfg in parallel, on one shared
// read-only rootfs. It starts all of them or none: on any failure the
// containers already started are removed. progress, if not nil, is called
// after each start with the number started so far.
func (r *Runtime) Spawn(ctx context.Context, cfg Config, n int, progress func(done, total int)) ([]*Container, error) {
	if n < 1 {
		return nil, fmt.Errorf("spawn %d containers: %w: the count must be at least 1", n, ErrInvalidConfig)
	}
	started, err := r.spawn(ctx, cfg, n, false, nil, progress)
	if err != nil {
		return nil, err
	}
	cs := make([]*Container, len(started))
	for i, c := range started {
		cs[i] = c.clone()
	}
	return cs, nil
}

// Stdio attaches a foreground container (Run) to streams.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Run starts one container attached to stdio, waits for it to exit and
// returns its record and exit code (128+N if killed by signal N). The
// container stays (exited) until Remove. Cancelling ctx kills it.
func (r *Runtime) Run(ctx context.Context, cfg Config, stdio Stdio) (*Container, int, error) {
	cs, err := r.spawn(ctx, cfg, 1, true, &stdio, nil)
	if err != nil {
		return nil, -1, err
	}
	c := cs[0]
	// Cancelling ctx (Ctrl-C) kills the container: as PID 1 of its own
	// namespace it would ignore the terminal's SIGINT.
	stop := context.AfterFunc(ctx, func() { _ = c.proc.Signal(unix.SIGKILL) })
	st, werr := c.proc.Wait()
	stop()
	code := -1
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok {
			code = exitCode(unix.WaitStatus(ws))
		}
	}
	if werr != nil && st == nil {
		return c.clone(), -1, fmt.Errorf("container %s: wait: %w", c.Name, werr)
	}
	c.ExitCode = &code
	c.Status = StatusExited
	if err := r.st.write(&c.Container); err != nil {
		return c.clone(), code, err
	}
	return c.clone(), code, nil
}

// started is a container being started by this process.
type started struct {
	Container
	proc  *libcontainer.Process
	watch *exitWatch
}

func (c *Container) clone() *Container { cc := *c; return &cc }

// spawn is Start, Spawn and Run: exact says cfg.Name is the name rather
// than a prefix; stdio, if not nil, attaches the (single) container.
func (r *Runtime) spawn(ctx context.Context, cfg Config, n int, exact bool, stdio *Stdio, progress func(done, total int)) (_ []*started, err error) {
	g, err := r.prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	supervised := false // a supervisor keeps g to restart its containers
	defer func() {
		if !supervised {
			g.close()
		}
	}()
	// Limits first: a start that cannot finish makes nothing.
	if err := r.checkLimits(ctx, g, n); err != nil {
		return nil, err
	}
	if err := r.checkPorts(ctx, g); err != nil {
		return nil, err
	}
	cfg = g.cfg
	prefix := cfg.Name
	if prefix == "" {
		prefix = defaultPrefix(g.img.Name)
		exact = false
	}

	// Records first, so that whatever happens next, ps tells the truth and
	// rm -f can finish the job.
	cs := make([]*started, n)
	defer func() {
		if err != nil {
			r.rollback(ctx, cs)
		}
	}()
	names, err := r.st.names()
	if err != nil {
		return nil, err
	}
	next := 1
	now := time.Now().UTC()
	var groupCg string
	if cfg.Cgroup == CgroupGroup {
		gid, err := newID()
		if err != nil {
			return nil, err
		}
		groupCg = groupCgroupPath(gid)
	}
	for i := range cs {
		id, err := newID()
		if err != nil {
			return nil, err
		}
		cgPath := cgroupPath(id)
		if groupCg != "" {
			cgPath = groupCg + "/" + id
		}
		c := &started{Container: Container{
			ID: id, Image: g.img.Name, ImageDigest: g.img.Digest.String(),
			Command: g.tmpl.args, Created: now, Network: cfg.Network,
			CgroupPath: cgPath, CgroupGroup: groupCg, Phase: phaseCreating, Resources: cfg.Resources,
			Restart: restartPolicy(cfg.Restart, stdio), Supervisor: supervisorPid(cfg.Restart, stdio),
			LogPath:   filepath.Join(r.st.containerDir(id), "log"),
			RootfsDir: filepath.Join(r.st.containerDir(id), "rootfs"),
		}}
		if !exact {
			c.Group = prefix // the spawn group, for rm --group
		}
		c.Ports = cfg.Ports // before they are published, so rm unpublishes them
		c.Endpoint = pendingEndpoint(&cfg, id)
		// The directory and the record come before the name, so that no
		// name ever points at nothing a crash could leave behind.
		if err := os.MkdirAll(c.RootfsDir, 0o700); err != nil {
			return nil, fmt.Errorf("container %s: %w", shortID(id), err)
		}
		cs[i] = c
		for {
			name := prefix
			if !exact {
				name = prefix + "-" + strconv.Itoa(next)
				next++
				if names[name] {
					continue
				}
			}
			c.Name = name
			if err := r.st.write(&c.Container); err != nil {
				return nil, err
			}
			err := r.st.reserveName(name, id)
			if err == nil {
				break
			}
			c.Name = ""
			if exact || !errors.Is(err, ErrNameInUse) {
				return nil, err
			}
		}
	}

	if g.drv != nil {
		ids := make([]string, n)
		for i, c := range cs {
			ids[i] = c.ID
		}
		eps, err := g.drv.Allocate(ctx, ids)
		if err != nil {
			return nil, err
		}
		for i, c := range cs {
			ep := eps[i]
			c.Endpoint = &ep
			c.IP = ep.Address.Addr().String()
			if err := r.st.write(&c.Container); err != nil {
				return nil, err
			}
		}
	}

	// The records name the group's cgroup, so rm removes it whatever
	// happens from here on.
	if groupCg != "" {
		if err := createGroupCgroup(groupCg, cfg.Resources); err != nil {
			return nil, err
		}
	}

	// Start them, a bounded number at once.
	workers := min(r.workers, n)
	work := make(chan *started)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if err := r.startOne(sctx, g, c, stdio); err != nil {
					errs <- err
					cancel()
					continue
				}
				if progress != nil {
					mu.Lock()
					done++
					progress(done, n)
					mu.Unlock()
				}
			}
		}()
	}
feed:
	for _, c := range cs {
		select {
		case work <- c:
		case <-sctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	if len(all) > 0 {
		return nil, firstErrors(all)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("spawn: %w", err)
	}

	// A detached container that exits at once is an error, not a success.
	if stdio == nil && r.grace > 0 {
		time.Sleep(r.grace)
		for _, c := range cs {
			if code, ok := c.watch.exited(); ok {
				return nil, fmt.Errorf("container %s: %w with status %d%s", c.Name, ErrExited, code, logTail(c.LogPath))
			}
		}
	}
	// All run: publish their ports, in one go.
	if err := r.publish(ctx, g, cs); err != nil {
		return nil, err
	}
	if restartPolicy(cfg.Restart, stdio) != "" {
		r.supervise(g, cs)
		supervised = true
	}
	return cs, nil
}

// restartPolicy is the policy recorded for a container: none for a
// foreground one, which is never restarted.
func restartPolicy(p string, stdio *Stdio) string {
	if stdio != nil || p == RestartNo {
		return ""
	}
	return p
}

func supervisorPid(p string, stdio *Stdio) int {
	if restartPolicy(p, stdio) == "" {
		return 0
	}
	return os.Getpid()
}

// firstErrors joins the first few errors and counts the rest.
func firstErrors(errs []error) error {
	const keep = 3
	if len(errs) <= keep {
		return errors.Join(errs...)
	}
	return fmt.Errorf("%w\n(and %d more errors)", errors.Join(errs[:keep]...), len(errs)-keep)
}

// logTail returns the last line of a log as ": LINE", or "".
func logTail(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return ": " + s
}

// startOne starts one container whose record exists.
func (r *Runtime) startOne(ctx context.Context, g *group, c *started, stdio *Stdio) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := r.st.lock(c.ID)
	if err != nil {
		return err
	}
	defer unlock()
	if rec, err := r.st.read(c.ID); err != nil {
		return fmt.Errorf("container %s: removed while being created", c.Name)
	} else if rec.StopRequested {
		return fmt.Errorf("container %s: %w", c.Name, errGone) // a restart that stop or rm overtook
	}
	l := &launch{
		id: c.ID, hostname: c.Name, rootfs: c.RootfsDir, cgroup: c.CgroupPath, mount: g.mount, shared: g.shared, tmpl: g.tmpl, log: r.log,
		wire: r.wire(ctx, g, c),
	}
	if stdio != nil {
		l.stdin, l.stdout, l.stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	} else {
		logf, err := os.OpenFile(c.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("container %s: log: %w", c.Name, err)
		}
		// The container keeps its own copy of the descriptor.
		defer logf.Close()
		l.stdout, l.stderr = logf, logf
	}
	p, err := l.start(r.st.runcRoot())
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	pid, err := p.Pid()
	if err == nil {
		c.PidStart, err = procStartTime(pid)
	}
	if err != nil {
		// It started and is gone already: for a foreground run that is
		// fine (the exit code is what matters), otherwise an error.
		if stdio == nil {
			return fmt.Errorf("container %s: %w%s", c.Name, ErrExited, logTail(c.LogPath))
		}
	}
	c.Pid = pid
	c.proc = p
	c.Phase = phaseStarted
	c.Status = StatusRunning
	c.Started = time.Now().UTC()
	if stdio == nil {
		if c.watch, err = reap(pid); err != nil {
			return fmt.Errorf("container %s: watch init %d: %w", c.Name, pid, err)
		}
	}
	return r.st.write(&c.Container)
}

// rollback removes the containers of a failed spawn, on a context that
// Ctrl-C cannot cancel, so nothing leaks.
func (r *Runtime) rollback(ctx context.Context, cs []*started) {
	var ids []string
	for _, c := range cs {
		if c != nil {
			ids = append(ids, c.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := r.removeIDs(cctx, ids, true); err != nil {
		r.log.Warn("rollback of a failed start left something behind", "error", err)
	}
}

// List returns every container, sorted by creation time then name, with
// its status as the kernel tells it now.
func (r *Runtime) List(ctx context.Context) ([]*Container, error) {
	ids, err := r.st.ids()
	if err != nil {
		return nil, err
	}
	cs := make([]*Container, 0, len(ids))
	for _, id := range ids {
		c, err := r.st.read(id)
		if errors.Is(err, ErrNotFound) {
			// A directory without a record: half-made before its record
			// was written, or half-removed. Show it so rm can finish it.
			c = &Container{ID: id, Phase: phaseCreating, Network: "", CgroupPath: cgroupPath(id),
				LogPath: filepath.Join(r.st.containerDir(id), "log"), RootfsDir: filepath.Join(r.st.containerDir(id), "rootfs")}
		} else if err != nil {
			return nil, err
		}
		r.refresh(c)
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool {
		if !cs[i].Created.Equal(cs[j].Created) {
			return cs[i].Created.Before(cs[j].Created)
		}
		return naturalLess(cs[i].Name, cs[j].Name)
	})
	return cs, nil
}

// naturalLess orders web-2 before web-10.
func naturalLess(a, b string) bool {
	ai, bi := strings.LastIndexByte(a, '-'), strings.LastIndexByte(b, '-')
	if ai >= 0 && bi >= 0 && a[:ai] == b[:bi] {
		x, err1 := strconv.Atoi(a[ai+1:])
		y, err2 := strconv.Atoi(b[bi+1:])
		if err1 == nil && err2 == nil {
			return x < y
		}
	}
	return a < b
}

// refresh derives the status from the record and the kernel.
func (r *Runtime) refresh(c *Container) {
	switch {
	case c.Phase == phaseStarted && alive(c.Pid, c.PidStart):
		c.Status = StatusRunning
	case c.Phase == phaseStarted:
		c.Status = StatusExited
	default:
		c.Status = StatusCreating
	}
	if c.Status != StatusRunning {
		c.Pid = 0
	}
}

// Get returns the container named by ref: a name, an id or a unique id prefix.
func (r *Runtime) Get(ctx context.Context, ref string) (*Container, error) {
	id, err := r.st.resolve(ref)
	if err != nil {
		return nil, err
	}
	c, err := r.st.read(id)
	if err != nil {
		return nil, err
	}
	r.refresh(c)
	return c, nil
}

// Resolve maps names, ids and id prefixes to full ids. Unknown ones are
// an error naming them.
func (r *Runtime) Resolve(ctx context.Context, refs []string) ([]string, error) {
	ids := make([]string, 0, len(refs))
	var errs []error
	for _, ref := range refs {
		id, err := r.st.resolve(ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ids = append(ids, id)
	}
	return ids, errors.Join(errs...)
}

// Logs opens the log (stdout and stderr) of a detached container.
func (r *Runtime) Logs(ctx context.Context, ref string) (io.ReadCloser, error) {
	c, err := r.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(c.LogPath)
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), nil
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: logs: %w", c.Name, err)
	}
	return f, nil
}
