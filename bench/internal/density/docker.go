package density

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Docker drives Debian's docker.io through its CLI, against a dockerd the
// harness starts for each run on a socket, data root and exec root of its
// own (so a system dockerd, if any, is left alone), and stops after it.
//
// The daemon runs with --iptables=false --ip-forward=false --bridge=none:
// the containers publish no ports, so Docker would add no per-container
// rule anyway, and the host's firewall and sysctls stay as found. The
// containers are on a user-defined bridge network, each with a fixed
// address.
type Docker struct {
	// Tuned is the Hypriot winners' Docker: --userland-proxy=false on the
	// daemon, --log-driver=none --read-only on each container.
	Tuned bool
	// Archive is the image as a docker-archive (docker load).
	Archive string
	// Image is the image's reference.
	Image string
	// Dir is the data root, Run the exec root (sockets, pids).
	Dir, Run string
	// Net and BridgeName: the network; Log receives dockerd's output.
	Net        netip.Prefix
	BridgeName string
	Log        string

	docker, dockerd string
	daemon          *exec.Cmd
	exited          chan struct{}
}

const benchNetwork = "pirun-bench"
const benchLabel = "pirun-bench=1"

func (d *Docker) Name() string {
	if d.Tuned {
		return "docker-tuned"
	}
	return "docker"
}
func (d *Docker) Subnet() netip.Prefix { return d.Net }
func (d *Docker) Bridge() string       { return d.BridgeName }
func (d *Docker) HelperNames() []string {
	// comm is cut at 15 characters: containerd-shim-runc-v2 → containerd-shim.
	return []string{"dockerd", "containerd", "containerd-shim", "docker-proxy", "runc", "docker"}
}
func (d *Docker) StateDirs() []string { return []string{d.Dir, d.Run} }

func (d *Docker) sock() string { return filepath.Join(d.Run, "docker.sock") }

func (d *Docker) cli(ctx context.Context, args ...string) (string, error) {
	return command(ctx, append(os.Environ(), "DOCKER_HOST=unix://"+d.sock()), d.docker, args...)
}

func (d *Docker) Setup(ctx context.Context) (err error) {
	// Debian's client first: another docker on PATH may be far newer than
	// Debian's daemon.
	if d.docker, err = lookPath("/usr/bin/docker", "docker"); err != nil {
		return err
	}
	if d.dockerd, err = lookPath("dockerd"); err != nil {
		return err
	}
	if _, err := lookPath("containerd"); err != nil {
		return err
	}
	// Every run starts from an empty data root and exec root: a daemon
	// restarted on the previous run's data root (or on one an interrupted
	// invocation left) brings back its containers, names and network
	// endpoints. docker and docker-tuned share the directories, so the
	// wipe also keeps the two apart. A containerd or shim still running
	// from such a run is killed first.
	if d.daemon != nil {
		return errors.New("dockerd of the previous run still running")
	}
	if n := killUnder(d.Run); n > 0 {
		time.Sleep(time.Second)
	}
	if err := errors.Join(removeDir(d.Dir), removeDir(d.Run)); err != nil {
		return fmt.Errorf("clean data root: %w", err)
	}
	if err := d.startDaemon(ctx); err != nil {
		return err
	}
	if ids, err := d.containers(ctx); err != nil || len(ids) > 0 {
		return fmt.Errorf("fresh dockerd lists %d containers (%v)", len(ids), err)
	}
	if _, err := d.cli(ctx, "load", "-q", "-i", d.Archive); err != nil {
		return err
	}
	if _, err := d.cli(ctx, "network", "create", "--driver", "bridge",
		"--subnet", d.Net.String(), "-o", "com.docker.network.bridge.name="+d.BridgeName,
		"--label", benchLabel, benchNetwork); err != nil {
		return err
	}
	return nil
}

// containers lists every container of the daemon, not only the labelled
// ones: the daemon is the harness's own.
func (d *Docker) containers(ctx context.Context) ([]string, error) {
	out, err := d.cli(ctx, "ps", "-aq", "--no-trunc")
	return lines(out), err
}

// removeAll removes every container, listing again after each round:
// `docker rm -f` of a batch fails as a whole when one of its containers
// fails, and a container may still be going away. Bounded: 10 rounds.
func (d *Docker) removeAll(ctx context.Context) error {
	var last error
	for round := 0; round < 10; round++ {
		ids, err := d.containers(ctx)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		last = fmt.Errorf("%d containers left: %w", len(ids), d.Remove(ctx, ids))
		select {
		case <-ctx.Done():
			return errors.Join(last, ctx.Err())
		case <-time.After(time.Duration(round) * 500 * time.Millisecond):
		}
	}
	return last
}

// removeNetwork removes the bench network. dockerd 20.10 may refuse with
// "has active endpoints" when endpoints outlived their containers: those
// are disconnected by force and the removal retried (bounded).
func (d *Docker) removeNetwork(ctx context.Context) error {
	var err error
	for try := 0; try < 5; try++ {
		if _, ierr := d.cli(ctx, "network", "inspect", benchNetwork); ierr != nil {
			return nil // gone
		}
		if _, err = d.cli(ctx, "network", "rm", benchNetwork); err == nil {
			return nil
		}
		out, _ := d.cli(ctx, "network", "inspect", "-f",
			"{{range $id, $c := .Containers}}{{$c.Name}}\n{{end}}", benchNetwork)
		for _, ep := range lines(out) {
			_, _ = d.cli(ctx, "network", "disconnect", "-f", benchNetwork, ep)
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(try+1) * 500 * time.Millisecond):
		}
	}
	return err
}

func (d *Docker) startDaemon(ctx context.Context) error {
	for _, dir := range []string{d.Dir, d.Run} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	if _, err := d.cli(ctx, "version"); err == nil {
		return fmt.Errorf("a dockerd already answers on %s: stop it first", d.sock())
	}
	log, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	args := []string{
		"--host", "unix://" + d.sock(),
		"--data-root", d.Dir,
		"--exec-root", filepath.Join(d.Run, "exec"),
		"--pidfile", filepath.Join(d.Run, "dockerd.pid"),
		"--iptables=false", "--ip-forward=false", "--bridge=none",
		"--log-level", "warn",
	}
	if d.Tuned {
		args = append(args, "--userland-proxy=false")
	}
	cmd := exec.Command(d.dockerd, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: Ctrl-C on the harness reaches the harness,
	// which then stops the daemon in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(log, "=== %s %s\n", time.Now().Format(time.RFC3339), strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return err
	}
	d.daemon = cmd
	d.exited = make(chan struct{})
	go func() { cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := d.cli(ctx, "version"); err == nil {
			return nil
		}
		select {
		case <-d.exited:
			d.daemon = nil
			return fmt.Errorf("dockerd exited at start (see %s): %w", d.Log, ErrSkipped)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer within 90s (see %s)", d.Log)
		}
	}
}

func (d *Docker) Start(ctx context.Context, n int, started func(id, ip string)) (int, error) {
	return startParallel(ctx, n, func(ctx context.Context, i int) error {
		ip := nthAddr(d.Net, i).String()
		args := []string{"run", "-d", "--name", "pbench-" + strconv.Itoa(i+1), "--label", benchLabel,
			"--network", benchNetwork, "--ip", ip}
		if d.Tuned {
			args = append(args, "--log-driver=none", "--read-only")
		}
		id, err := d.cli(ctx, append(args, d.Image)...)
		if err != nil {
			return err
		}
		started(id, ip)
		return nil
	})
}

func (d *Docker) Remove(ctx context.Context, ids []string) error {
	return removeParallel(ctx, ids, 25, func(ctx context.Context, ids []string) error {
		_, err := d.cli(ctx, append([]string{"rm", "-f"}, ids...)...)
		return err
	})
}

func (d *Docker) Count(ctx context.Context) (int, error) {
	out, err := d.cli(ctx, "ps", "-aq", "--filter", "label="+benchLabel)
	return len(lines(out)), err
}

// Teardown removes what containers remain (all of them, until none is
// listed), the network, stops the daemon (SIGTERM, which also stops its
// containerd; SIGKILL after 60s) and removes its data and exec roots.
func (d *Docker) Teardown(ctx context.Context) error {
	if d.daemon == nil {
		return nil
	}
	var errs []error
	if err := d.removeAll(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := d.removeNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	d.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.daemon.Process.Kill()
		<-d.exited
		errs = append(errs, errors.New("dockerd did not stop in 60s: killed"))
	}
	d.daemon = nil
	// A containerd or shim that outlived its daemon is killed, and counted.
	if n := killUnder(d.Run); n > 0 {
		errs = append(errs, fmt.Errorf("killed %d processes of dockerd's exec root left after it stopped", n))
		time.Sleep(time.Second)
	}
	// Nothing of the run stays for the next one (Setup wipes again).
	if err := errors.Join(removeDir(d.Dir), removeDir(d.Run)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Docker) Close(ctx context.Context) error {
	return errors.Join(removeDir(d.Dir), removeDir(d.Run))
}

// killUnder kills the processes whose command line names dir.
func killUnder(dir string) int {
	n := 0
	self := os.Getpid()
	for pid, p := range scanProcs() {
		if p.Kernel || pid == self || pid == 1 {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err == nil && strings.Contains(string(cmdline), dir) {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}
