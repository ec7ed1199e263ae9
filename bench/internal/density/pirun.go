package density

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// Pirun drives pirun through its Go API (runtime, image), in a child
// process: the harness runs itself again as `density pirun-child OP`, so
// that, as with the pirun CLI, nothing of pirun stays resident once the
// containers run, and the harness's own memory is not pirun's. The
// containers get a bridge of their own (not pirun0), a store and a state
// directory of their own.
type Pirun struct {
	// Archive is the image as an OCI archive, Image its name.
	Archive, Image string
	// Root is the image store, State the runtime state.
	Root, State string
	Net         netip.Prefix
	BridgeName  string
	// Restart, if set, spawns with that restart policy: the child that
	// spawns stays as the group's supervisor (as `pirun spawn --restart`
	// does), and is measured as the runtime's helper.
	Restart string

	imported bool
}

func (p *Pirun) Name() string {
	if p.Restart != "" {
		return "pirun-restart"
	}
	return "pirun"
}
func (p *Pirun) Subnet() netip.Prefix  { return p.Net }
func (p *Pirun) Bridge() string        { return p.BridgeName }
func (p *Pirun) StateDirs() []string   { return []string{p.Root, p.State} }
func (p *Pirun) HelperNames() []string { return []string{"pirun", ChildCommand} }

// ChildCommand is the first argument that makes the harness binary run
// RunChild.
const ChildCommand = "pirun-child"

type childRecord struct {
	ID string `json:"id"`
	IP string `json:"ip"`
}

// child runs `self pirun-child op args…` and decodes its JSON output into
// out. On ctx's end the child gets SIGINT, so that a spawn rolls back, and
// SIGKILL two minutes later.
func (p *Pirun) child(ctx context.Context, stdin []byte, out any, op string, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	all := append([]string{ChildCommand, op, "-root", p.Root, "-state", p.State,
		"-bridge", p.BridgeName, "-subnet", p.Net.String()}, args...)
	cmd := exec.CommandContext(ctx, self, all...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pirun %s: %w: %s", op, err, strings.TrimSpace(stderr.String()))
	}
	if out != nil {
		return json.Unmarshal(stdout.Bytes(), out)
	}
	return nil
}

func (p *Pirun) Setup(ctx context.Context) error {
	if p.imported {
		return nil
	}
	if err := p.child(ctx, nil, nil, "import", "-archive", p.Archive); err != nil {
		return err
	}
	p.imported = true
	return nil
}

// supervisor runs `self pirun-child spawn -restart …` in a session of its
// own, decodes the containers it reports, and leaves it running.
func (p *Pirun) supervisor(ctx context.Context, out any, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	all := append([]string{ChildCommand, "spawn", "-root", p.Root, "-state", p.State,
		"-bridge", p.BridgeName, "-subnet", p.Net.String(), "-restart", p.Restart}, args...)
	cmd := exec.Command(self, all...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(os.Interrupt) })
	defer stop()
	if err := json.NewDecoder(stdout).Decode(out); err != nil {
		_ = cmd.Wait()
		return fmt.Errorf("pirun spawn -restart: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return cmd.Process.Release() // it supervises until its containers are removed
}

func (p *Pirun) Start(ctx context.Context, n int, started func(id, ip string)) (int, error) {
	var cs []childRecord
	spawn := func() error { return p.child(ctx, nil, &cs, "spawn", "-n", fmt.Sprint(n), "-image", p.Image) }
	if p.Restart != "" {
		spawn = func() error { return p.supervisor(ctx, &cs, "-n", fmt.Sprint(n), "-image", p.Image) }
	}
	if err := spawn(); err != nil {
		// All or none: none started.
		if ctx.Err() != nil {
			return 0, fmt.Errorf("cut by the time budget: %w", err)
		}
		return n, err
	}
	for _, c := range cs {
		started(c.ID, c.IP)
	}
	return 0, nil
}

func (p *Pirun) Remove(ctx context.Context, ids []string) error {
	b, _ := json.Marshal(ids)
	return p.child(ctx, b, nil, "rm")
}

func (p *Pirun) Count(ctx context.Context) (int, error) {
	var n int
	err := p.child(ctx, nil, &n, "count")
	return n, err
}

func (p *Pirun) Teardown(ctx context.Context) error {
	if !p.imported {
		return nil
	}
	return p.child(ctx, []byte("null"), nil, "rm") // null: all
}

func (p *Pirun) Close(ctx context.Context) error {
	return errors.Join(removeDir(p.State), removeDir(p.Root))
}

// RunChild is the child side of the Pirun driver: args are what follows
// ChildCommand. It writes JSON to stdout.
func RunChild(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) < 1 {
		return errors.New("pirun-child: no operation")
	}
	op := args[0]
	fs := flag.NewFlagSet(ChildCommand+" "+op, flag.ContinueOnError)
	root := fs.String("root", "", "image store")
	state := fs.String("state", "", "runtime state")
	bridge := fs.String("bridge", "", "bridge name")
	subnet := fs.String("subnet", "", "bridge subnet")
	archive := fs.String("archive", "", "OCI archive to import")
	img := fs.String("image", "", "image to spawn")
	n := fs.Int("n", 1, "containers to spawn")
	restart := fs.String("restart", "", "restart policy; the child then stays to supervise")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := image.Open(*root)
	if err != nil {
		return err
	}
	if op == "import" {
		_, err := store.Import(ctx, "oci-archive:"+*archive)
		return err
	}
	prefix, err := netip.ParsePrefix(*subnet)
	if err != nil {
		return err
	}
	rt, err := runtime.New(*state, store, runtime.WithNetworkOptions(
		network.WithBridgeName(*bridge), network.WithSubnet(prefix)))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	switch op {
	case "spawn":
		cs, err := rt.Spawn(ctx, runtime.Config{Image: *img, Name: "pbench", Restart: *restart}, *n, nil)
		if err != nil {
			return err
		}
		out := make([]childRecord, len(cs))
		for i, c := range cs {
			out[i] = childRecord{ID: c.ID, IP: c.IP}
		}
		if err := enc.Encode(out); err != nil || *restart == "" {
			return err
		}
		if f, ok := stdout.(*os.File); ok {
			f.Close() // the harness has what it needs
		}
		if err := rt.Supervise(ctx); err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	case "rm":
		var ids []string
		if err := json.NewDecoder(stdin).Decode(&ids); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if ids == nil {
			cs, err := rt.List(ctx)
			if err != nil {
				return err
			}
			for _, c := range cs {
				ids = append(ids, c.ID)
			}
		}
		if len(ids) == 0 {
			return nil
		}
		// Cleanup is not cut short by a signal.
		return rt.Remove(context.WithoutCancel(ctx), ids, true)
	case "count":
		cs, err := rt.List(ctx)
		if err != nil {
			return err
		}
		return enc.Encode(len(cs))
	}
	return fmt.Errorf("pirun-child: unknown operation %q", op)
}
