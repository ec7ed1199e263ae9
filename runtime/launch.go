package runtime

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/image"
)

// launch is what one container start needs.
type launch struct {
	id       string
	hostname string
	rootfs   string        // mount point; empty on the host
	cgroup   string        // cgroup path, e.g. /pirun/<id>
	mount    image.Mount   // the image's read-only overlay
	shared   *sharedRootfs // the group's overlay to attach, or nil: mount one
	tmpl     *template
	// wire sets up the container's network inside the namespace at
	// nsPath; nil: the container has no network namespace of its own.
	wire   func(nsPath string) error
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

// start starts the container described by l and returns its running init.
//
// The work happens on a fresh OS thread that leaves the host's mount and
// network namespaces (see the package doc). The thread is never unlocked, so
// the Go runtime ends it when the goroutine returns instead of reusing a
// thread that sits in the container's namespaces.
func (l *launch) start(runcRoot string) (*libcontainer.Process, error) {
	type result struct {
		p   *libcontainer.Process
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		p, err := l.startLocked(runcRoot)
		ch <- result{p, err}
	}()
	res := <-ch
	return res.p, res.err
}

func (l *launch) startLocked(runcRoot string) (_ *libcontainer.Process, err error) {
	t0 := time.Now()
	flags := unix.CLONE_NEWNS
	if l.wire != nil {
		flags |= unix.CLONE_NEWNET
	}
	if err := unix.Unshare(flags); err != nil {
		return nil, fmt.Errorf("unshare mount and network namespaces: %w", err)
	}
	// Nothing mounted here may reach the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make the launcher's mounts private: %w", err)
	}
	if l.shared != nil {
		if err := l.shared.attach(l.rootfs); err != nil {
			return nil, err
		}
	} else if err := mountSpec(l.mount, l.rootfs); err != nil {
		return nil, err
	}
	nsPath := "" // the host's
	if l.wire != nil {
		nsPath = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := l.wire(nsPath); err != nil {
			return nil, err
		}
	}
	t1 := time.Now()
	ct, err := libcontainer.Create(runcRoot, l.id, l.tmpl.configFor(l.cgroup, l.hostname, l.rootfs, nsPath))
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	defer func() {
		if err != nil {
			_ = ct.Destroy()
		}
	}()
	p := &libcontainer.Process{
		Args:   l.tmpl.args,
		Env:    append(append([]string{}, l.tmpl.env...), "HOSTNAME="+l.hostname),
		Cwd:    l.tmpl.cwd,
		UID:    l.tmpl.uid,
		GID:    l.tmpl.gid,
		Stdin:  l.stdin,
		Stdout: l.stdout,
		Stderr: l.stderr,
		Init:   true,
	}
	t2 := time.Now()
	if err := ct.Run(p); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(l.tmpl.args, " "), err)
	}
	l.log.Debug("container started", "id", l.id[:12], "mount+network", t1.Sub(t0), "create", t2.Sub(t1), "run", time.Since(t2))
	return p, nil
}

// mountSpec mounts an image.Mount at target.
func mountSpec(m image.Mount, target string) error {
	var flags uintptr
	var data []string
	for _, o := range m.Options {
		switch o {
		case "ro":
			flags |= unix.MS_RDONLY
		case "rw":
		default:
			data = append(data, o)
		}
	}
	if err := unix.Mount(m.Source, target, m.Type, flags, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount %s rootfs at %s: %w", m.Type, target, err)
	}
	return nil
}
