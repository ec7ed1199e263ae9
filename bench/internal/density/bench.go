package density

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pirun/pirun/runtime"
)

// Config is one invocation of the harness.
type Config struct {
	// Archive is the image as an OCI archive (make image writes one).
	Archive string
	// Image is its name.
	Image string
	// Counts are the N to measure, Repeat how many times each.
	Counts []int
	Repeat int
	// Runtimes to measure, of "pirun", "docker", "docker-tuned", "podman".
	Runtimes []string
	// Budget returns the start budget for n containers.
	Budget func(n int) time.Duration
	// AnswerGrace is how long the containers may take to answer after the
	// last start. Default: 60s.
	AnswerGrace time.Duration
	// Work is the harness's directory on disk, Run on /run; both are
	// removed at the end unless Keep.
	Work, Run string
	Keep      bool
	Log       io.Writer
	// Checkpoint, if not nil, is called after every run with what has
	// been measured so far.
	Checkpoint func(*Results)
}

// Subnets: pirun's default is 10.123.0.0/16 and podman's 10.88.0.0/16;
// the harness uses three others, one per runtime.
var (
	pirunNet = netip.MustParsePrefix("10.127.0.0/16")
	// pirun with a restart policy (its supervisor measured as a helper)
	pirunRestartNet = netip.MustParsePrefix("10.128.0.0/16")
	dockerNet       = netip.MustParsePrefix("10.124.0.0/16")
	podmanNet       = netip.MustParsePrefix("10.125.0.0/16")
)

// AllRuntimes are the runtimes the harness knows, in report order.
func AllRuntimes() []string { return slices.Clone(order) }

// Bench measures every runtime at every N, Repeat times, alternating
// between runtimes (the order rotates with each repetition), and leaves
// the host as it found it.
func Bench(ctx context.Context, cfg Config) (_ *Results, err error) {
	if cfg.AnswerGrace == 0 {
		cfg.AnswerGrace = 60 * time.Second
	}
	res := &Results{Started: time.Now().UTC(), Host: hostInfo(), Versions: map[string]string{},
		Settings: map[string]string{
			"counts":    fmt.Sprint(cfg.Counts),
			"repeat":    strconv.Itoa(cfg.Repeat),
			"starters":  fmt.Sprintf("%d parallel CLI starters for docker and podman; pirun: one Spawn call (its default workers, 2 per CPU)", Starters),
			"answering": fmt.Sprintf("GET / from %d pollers, each request ≤%s, each address ≤%d tries, %s after the last start at most", pollWorkers, requestTimeout, maxAttempts, cfg.AnswerGrace),
		}}
	for _, n := range cfg.Counts {
		res.Settings[fmt.Sprintf("budget N=%d", n)] = cfg.Budget(n).String()
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	for _, d := range []string{cfg.Work, cfg.Run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}

	// What the runs may change on the host, to put back.
	forward := readSysctl("net.ipv4.ip_forward")
	chains := iptablesChains()
	cleanup := context.WithoutCancel(ctx)

	drivers, dockerArchive, err := makeDrivers(ctx, cfg, res)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, d := range drivers {
			if cerr := d.Close(cleanup); cerr != nil {
				res.HostChanges = append(res.HostChanges, fmt.Sprintf("%s: close: %v", d.Name(), cerr))
			}
		}
		// A bridge a daemon left (dockerd 20.10 sometimes refuses to
		// remove a network with "active endpoints" after its last
		// container went).
		for _, d := range drivers {
			if name := d.Bridge(); strings.HasPrefix(name, "pbench-") {
				if l, lerr := netlink.LinkByName(name); lerr == nil {
					derr := netlink.LinkDel(l)
					res.HostChanges = append(res.HostChanges, fmt.Sprintf("bridge %s left by %s, removed by the harness (error: %v)", name, d.Name(), derr))
				}
			}
		}
		if now := readSysctl("net.ipv4.ip_forward"); now != forward {
			res.HostChanges = append(res.HostChanges, fmt.Sprintf("net.ipv4.ip_forward was set to %s during the runs; restored to %s", now, forward))
			_ = writeSysctl("net.ipv4.ip_forward", forward)
		}
		// podman's netavark (or CNI) leaves its chains when its last
		// network goes; the harness made them happen, so it removes them.
		if removed, rerr := removeChains(chains, "NETAVARK", "CNI-"); len(removed) > 0 || rerr != nil {
			res.HostChanges = append(res.HostChanges, fmt.Sprintf("iptables chains made by the runs, removed by the harness: %s (errors: %v)", strings.Join(removed, ", "), rerr))
		}
		var added []string
		for c := range iptablesChains() {
			if !chains[c] {
				added = append(added, c)
			}
		}
		sort.Strings(added)
		if len(added) > 0 {
			res.HostChanges = append(res.HostChanges, "iptables chains left by the runtimes (not removed by the harness): "+strings.Join(added, ", "))
		}
		if !cfg.Keep {
			_ = os.Remove(dockerArchive)
			if rerr := removeDir(cfg.Work); rerr != nil {
				res.HostChanges = append(res.HostChanges, "remove "+cfg.Work+": "+rerr.Error())
			}
			if rerr := removeDir(cfg.Run); rerr != nil {
				res.HostChanges = append(res.HostChanges, "remove "+cfg.Run+": "+rerr.Error())
			}
		}
		res.Finished = time.Now().UTC()
	}()

	skipped := map[string]string{}
	for rep := 1; rep <= cfg.Repeat; rep++ {
		for _, n := range cfg.Counts {
			for i := range drivers {
				d := drivers[(i+rep-1)%len(drivers)]
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				if why, ok := skipped[d.Name()]; ok {
					res.Runs = append(res.Runs, Run{Runtime: d.Name(), N: n, Rep: rep, Skipped: why})
					continue
				}
				r := Measure(ctx, d, n, rep, Options{Budget: cfg.Budget(n), AnswerGrace: cfg.AnswerGrace, Log: cfg.Log})
				if r.Skipped != "" {
					logf("%s: skipped: %s", d.Name(), r.Skipped)
					skipped[d.Name()] = r.Skipped
				}
				if r.Error != "" {
					logf("%s N=%d rep %d: %s", d.Name(), n, rep, r.Error)
				}
				res.Runs = append(res.Runs, r)
				if cfg.Checkpoint != nil {
					cfg.Checkpoint(res)
				}
			}
		}
	}
	return res, nil
}

func makeDrivers(ctx context.Context, cfg Config, res *Results) ([]Driver, string, error) {
	dockerArchive := filepath.Join(cfg.Work, "rpi-busybox-httpd.docker.tar")
	var drivers []Driver
	var archiveErr error
	converted := false
	convert := func() error {
		if converted || archiveErr != nil {
			return archiveErr
		}
		converted = true
		skopeo, err := lookPath("skopeo")
		if err != nil {
			archiveErr = err
			return err
		}
		os.Remove(dockerArchive)
		// The same files, for Docker and podman: docker load wants a
		// docker-archive.
		_, archiveErr = command(ctx, nil, skopeo, "copy", "--quiet", "oci-archive:"+cfg.Archive,
			"docker-archive:"+dockerArchive+":"+cfg.Image)
		return archiveErr
	}
	for _, name := range cfg.Runtimes {
		var d Driver
		switch name {
		case "pirun":
			d = &Pirun{Archive: cfg.Archive, Image: cfg.Image, Root: filepath.Join(cfg.Work, "pirun"),
				State: filepath.Join(cfg.Run, "pirun"), Net: pirunNet, BridgeName: "pbench-pirun"}
			res.Versions["pirun"] = gitDescribe()
		case "pirun-restart":
			d = &Pirun{Archive: cfg.Archive, Image: cfg.Image, Root: filepath.Join(cfg.Work, "pirun-restart"),
				State: filepath.Join(cfg.Run, "pirun-restart"), Net: pirunRestartNet, BridgeName: "pbench-prst",
				Restart: runtime.RestartOnFailure}
			res.Versions["pirun"] = gitDescribe()
		case "docker", "docker-tuned":
			d = &Docker{Tuned: name == "docker-tuned", Archive: dockerArchive, Image: cfg.Image,
				Dir: filepath.Join(cfg.Work, "docker"), Run: filepath.Join(cfg.Run, "docker"),
				Net: dockerNet, BridgeName: "pbench-docker", Log: filepath.Join(cfg.Work, "dockerd.log")}
			res.Versions["docker"] = version("dockerd", "--version")
			res.Versions["containerd"] = version("containerd", "--version")
			res.Versions["runc"] = firstLine(version("runc", "--version"))
		case "podman":
			d = &Podman{Archive: dockerArchive, Image: cfg.Image, Dir: filepath.Join(cfg.Work, "podman"),
				Run: filepath.Join(cfg.Run, "podman"), Net: podmanNet}
			res.Versions["podman"] = version("podman", "--version")
			res.Versions["crun"] = firstLine(version("crun", "--version"))
			res.Versions["conmon"] = firstLine(version("conmon", "--version"))
		default:
			return nil, "", fmt.Errorf("runtime %q: unknown (use %s)", name, strings.Join(order, ", "))
		}
		if name != "pirun" && name != "pirun-restart" {
			if err := convert(); err != nil {
				d = skippedDriver{Driver: d, why: fmt.Errorf("image for %s: %w", name, err)}
			}
		}
		drivers = append(drivers, d)
	}
	return drivers, dockerArchive, nil
}

// skippedDriver is a runtime that cannot run because its image could not
// be made.
type skippedDriver struct {
	Driver
	why error
}

func (s skippedDriver) Setup(context.Context) error {
	if errors.Is(s.why, ErrSkipped) {
		return s.why
	}
	return fmt.Errorf("%w: %v", ErrSkipped, s.why)
}
func (s skippedDriver) Teardown(context.Context) error { return nil }
func (s skippedDriver) Close(context.Context) error    { return nil }

func version(bin string, args ...string) string {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "not installed"
	}
	out, err := exec.Command(p, args...).Output()
	if err != nil {
		return "not installed"
	}
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func gitDescribe() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out)) + " (built into the harness)"
}

func hostInfo() map[string]string {
	h := map[string]string{"cpus": strconv.Itoa(goruntime.NumCPU()), "arch": goruntime.GOARCH, "go": goruntime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h["kernel"] = strings.TrimSpace(string(b))
	}
	if m, err := readMeminfo(); err == nil {
		h["mem_mib"] = strconv.FormatInt(m["MemTotal"]/1024, 10)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				h["cpu"] = strings.TrimSpace(strings.TrimLeft(v, "\t :"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/debian_version"); err == nil {
		h["debian"] = strings.TrimSpace(string(b))
	}
	return h
}
