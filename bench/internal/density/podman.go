package density

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Podman drives Debian's podman, rootful, with crun, through its CLI, on a
// storage root, run root and network configuration directory of its own
// (so the host's podman state is left alone). Debian 12's podman has no
// systemd here to talk to: cgroupfs and a file for events. The containers
// log to files (k8s-file), as Docker's do by default.
type Podman struct {
	// Archive is the image as a docker-archive (podman load).
	Archive string
	Image   string
	// Dir holds the storage, Run the run root, the tmp dir and the
	// network configuration.
	Dir, Run string
	Net      netip.Prefix

	podman     string
	bridge     string
	netCreated bool
	oci        string // crun, or runc where crun cannot run
	note       string
	ulimits    []string
}

// Note says which OCI runtime podman used, and why if not crun.
func (p *Podman) Note() string { return p.note }

func (p *Podman) Name() string         { return "podman" }
func (p *Podman) Subnet() netip.Prefix { return p.Net }
func (p *Podman) Bridge() string       { return p.bridge }
func (p *Podman) StateDirs() []string  { return []string{p.Dir, p.Run} }
func (p *Podman) HelperNames() []string {
	return []string{"conmon", "podman", "crun", "netavark", "aardvark-dns", "catatonit", "slirp4netns"}
}

func (p *Podman) cli(ctx context.Context, args ...string) (string, error) {
	global := []string{
		"--root", filepath.Join(p.Dir, "storage"),
		"--runroot", filepath.Join(p.Run, "runroot"),
		"--tmpdir", filepath.Join(p.Run, "tmp"),
		"--network-config-dir", filepath.Join(p.Dir, "networks"),
		"--runtime", cmp.Or(p.oci, "crun"),
		"--cgroup-manager", "cgroupfs",
		"--events-backend", "file",
	}
	return command(ctx, nil, p.podman, append(global, args...)...)
}

func (p *Podman) Setup(ctx context.Context) (err error) {
	if p.podman, err = lookPath("podman"); err != nil {
		return err
	}
	for _, b := range []string{"crun", "conmon"} {
		if _, err := lookPath(b); err != nil {
			return err
		}
	}
	for _, dir := range []string{p.Dir, filepath.Join(p.Dir, "networks"), p.Run} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	if _, err := p.cli(ctx, "image", "exists", p.Image); err != nil {
		if _, err := p.cli(ctx, "load", "-q", "-i", p.Archive); err != nil {
			return err
		}
	}
	if err := p.chooseRuntime(ctx); err != nil {
		return err
	}
	if _, err := p.cli(ctx, "network", "exists", benchNetwork); err != nil {
		if _, err := p.cli(ctx, "network", "create", "--subnet", p.Net.String(), "--label", benchLabel, benchNetwork); err != nil {
			return err
		}
		p.netCreated = true
	}
	p.bridge, err = p.cli(ctx, "network", "inspect", benchNetwork, "--format", "{{.NetworkInterface}}")
	return err
}

// chooseRuntime probes crun with one container; where it fails (crun 1.8
// refuses a hybrid cgroup host with a controller on cgroup2) podman runs
// with runc instead, and the report says so.
func (p *Podman) chooseRuntime(ctx context.Context) error {
	if p.note != "" {
		return nil // chosen at the first run
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	// Podman's defaults raise RLIMIT_NOFILE to 1048576 and set
	// RLIMIT_NPROC, which needs CAP_SYS_RESOURCE; give the host's open-file
	// limit, as Docker and pirun containers inherit it.
	p.ulimits = []string{"--ulimit", fmt.Sprintf("nofile=%d:%d", lim.Cur, lim.Max), "--ulimit", "nproc=32768:32768"}
	probe := func(oci string) error {
		p.oci = oci
		_, err := p.cli(ctx, append(append([]string{"run", "--rm", "--network", "none"}, p.ulimits...), p.Image, "true")...)
		return err
	}
	crunErr := probe("crun")
	if crunErr == nil {
		p.note = "podman with crun"
		return nil
	}
	if err := probe("runc"); err != nil {
		return fmt.Errorf("podman cannot run a container with crun (%v) nor runc: %w", crunErr, err)
	}
	p.note = fmt.Sprintf("podman with runc, not crun: crun failed here: %v", crunErr)
	return nil
}

func (p *Podman) Start(ctx context.Context, n int, started func(id, ip string)) (int, error) {
	return startParallel(ctx, n, func(ctx context.Context, i int) error {
		ip := nthAddr(p.Net, i).String()
		args := []string{"run", "-d", "--name", "pbench-" + strconv.Itoa(i+1), "--label", benchLabel,
			"--network", benchNetwork, "--ip", ip, "--log-driver", "k8s-file"}
		id, err := p.cli(ctx, append(append(args, p.ulimits...), p.Image)...)
		if err != nil {
			return err
		}
		started(id, ip)
		return nil
	})
}

func (p *Podman) Remove(ctx context.Context, ids []string) error {
	return removeParallel(ctx, ids, 25, func(ctx context.Context, ids []string) error {
		_, err := p.cli(ctx, append([]string{"rm", "-f"}, ids...)...)
		return err
	})
}

func (p *Podman) Count(ctx context.Context) (int, error) {
	out, err := p.cli(ctx, "ps", "-aq", "--filter", "label="+benchLabel)
	return len(lines(out)), err
}

func (p *Podman) Teardown(ctx context.Context) error {
	if p.podman == "" {
		return nil
	}
	var errs []error
	if out, err := p.cli(ctx, "ps", "-aq", "--filter", "label="+benchLabel); err == nil && out != "" {
		errs = append(errs, p.Remove(ctx, lines(out)))
	}
	if _, err := p.cli(ctx, "network", "exists", benchNetwork); err == nil {
		if _, err := p.cli(ctx, "network", "rm", "-f", benchNetwork); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Podman) Close(ctx context.Context) error {
	var errs []error
	// CNI's host-local allocations of the network, if CNI kept any.
	errs = append(errs, os.RemoveAll(filepath.Join("/var/lib/cni/networks", benchNetwork)))
	errs = append(errs, removeDir(p.Dir), removeDir(p.Run))
	return errors.Join(errs...)
}
