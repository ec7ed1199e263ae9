package runtime_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/internal/testutil"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

func TestMain(m *testing.M) {
	if runtime.IsInit() {
		runtime.Init()
	}
	// Everything these tests do to the network happens in a namespace of
	// their own: the host's links and rules are never touched.
	if code, ok := testutil.RunInPrivateNetns(); ok {
		os.Exit(code)
	}
	if os.Geteuid() != 0 {
		// The tests skip without root; the example cannot, so leave it out.
		flag.Parse()
		if flag.Lookup("test.run").Value.String() == "" {
			flag.Set("test.run", "^Test")
		}
	}
	code := m.Run()
	if fixture.root != "" {
		os.RemoveAll(fixture.root)
	}
	os.Exit(code)
}

// fixture is an image store holding the default image, built once.
var fixture struct {
	once  sync.Once
	root  string
	store *image.Store
	err   error
}

const imageName = "rpi-busybox-httpd"

func imageStore(t *testing.T) *image.Store {
	t.Helper()
	testutil.RequiresRoot(t)
	archive := testutil.DefaultImageArchive(t)
	fixture.once.Do(func() {
		dir, err := os.MkdirTemp("", "pirun-runtime-test-")
		if err != nil {
			fixture.err = err
			return
		}
		fixture.root = dir
		if fixture.store, fixture.err = image.Open(filepath.Join(dir, "store")); fixture.err != nil {
			return
		}
		_, fixture.err = fixture.store.Import(context.Background(), "oci-archive:"+archive)
	})
	if fixture.err != nil {
		t.Fatalf("image fixture: %v", fixture.err)
	}
	return fixture.store
}

// testBridge counts bridges so that tests never share one.
var testBridge struct {
	mu sync.Mutex
	n  int
}

// newRuntime returns a runtime on a state dir of its own and a bridge of
// its own, and checks when the test ends that everything was removed.
func newRuntime(t *testing.T, opts ...runtime.Option) *runtime.Runtime {
	t.Helper()
	s := imageStore(t)
	testBridge.mu.Lock()
	testBridge.n++
	n := testBridge.n
	testBridge.mu.Unlock()
	bridge := fmt.Sprintf("pirun-t%d", n)
	subnet := netip.MustParsePrefix(fmt.Sprintf("10.124.%d.0/24", n))
	opts = append([]runtime.Option{runtime.WithNetworkOptions(network.WithBridgeName(bridge), network.WithSubnet(subnet))}, opts...)
	state := t.TempDir()
	rt, err := runtime.New(state, s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Remove whatever a failed test left, then insist nothing is left.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cs, err := rt.List(ctx)
		if err != nil {
			t.Errorf("cleanup: list: %v", err)
		}
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ID)
		}
		if len(ids) > 0 {
			if err := rt.Remove(ctx, ids, true); err != nil {
				t.Errorf("cleanup: remove: %v", err)
			}
		}
		assertNothingLeft(t, state, bridge)
	})
	return rt
}

// assertNothingLeft checks that no container of the state dir left a
// record, process, cgroup, mount, link or name behind.
func assertNothingLeft(t *testing.T, state, bridge string) {
	t.Helper()
	for _, sub := range []string{"containers", "names", "runc"} {
		ents, _ := os.ReadDir(filepath.Join(state, sub))
		if len(ents) > 0 {
			t.Errorf("leak: %d entries left in %s/%s", len(ents), state, sub)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mi, []byte(state)) {
		t.Errorf("leak: a mount under %s", state)
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		name := l.Attrs().Name
		if name == bridge || strings.HasPrefix(name, "pr") && len(name) == 12 {
			t.Errorf("leak: link %s", name)
		}
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/pirun/*"); len(m) > 0 {
		// Another test binary may run containers at the same time; only
		// fail on cgroups of containers this state dir knew.
		known, _ := os.ReadDir(filepath.Join(state, "containers"))
		for _, k := range known {
			if found, _ := filepath.Glob("/sys/fs/cgroup/*/pirun/" + k.Name()); len(found) > 0 {
				t.Errorf("leak: cgroup %s", found[0])
			}
		}
	}
}

func TestRunForeground(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()

	var out bytes.Buffer
	c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Cmd: []string{"cat", "/www/index.html"}}, runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || !strings.Contains(out.String(), "Hello from pirun") {
		t.Fatalf("cat /www/index.html: exit %d, output %q", code, out.String())
	}
	if c.Status != runtime.StatusExited || c.ExitCode == nil || *c.ExitCode != 0 {
		t.Errorf("record after run: status %s exit %v", c.Status, c.ExitCode)
	}
	if err := rt.Remove(ctx, []string{c.ID}, false); err != nil {
		t.Fatalf("remove an exited container: %v", err)
	}

	c, code, err = rt.Run(ctx, runtime.Config{Image: imageName, Cmd: []string{"sh", "-c", "exit 3"}}, runtime.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Errorf("sh -c 'exit 3': exit code %d, want 3", code)
	}
	if err := rt.Remove(ctx, []string{c.ID}, false); err != nil {
		t.Fatal(err)
	}
}

// A container cannot write its rootfs, and running containers leaves the
// image's layer directories exactly as they were.
func TestReadOnlyRootfs(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	before := treeDigest(t, filepath.Join(fixture.root, "store", "layers"))

	var out bytes.Buffer
	script := `touch /x && echo ROOTFS-WRITABLE; echo hi > /www/index.html && echo PAGE-WRITABLE; echo ok > /tmp/ok && cat /tmp/ok`
	c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Cmd: []string{"sh", "-c", script}},
		runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Remove(ctx, []string{c.ID}, true)
	if strings.Contains(out.String(), "WRITABLE") {
		t.Errorf("the container wrote its rootfs: %q", out.String())
	}
	if !strings.Contains(out.String(), "Read-only file system") || !strings.Contains(out.String(), "ok") || code != 0 {
		t.Errorf("want EROFS on / and a writable /tmp, got exit %d: %q", code, out.String())
	}
	if after := treeDigest(t, filepath.Join(fixture.root, "store", "layers")); after != before {
		t.Errorf("layer directories changed")
	}
}

// treeDigest hashes names, modes, sizes, mtimes and contents below dir.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v %d %d\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// Spawned containers each answer HTTP on their own address, survive as
// detached processes, stop, and are removed without a trace.
func TestSpawnServeStopRemove(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	const n = 10
	var calls int
	cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Name: "web"}, n, func(done, total int) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != n || calls != n {
		t.Fatalf("spawned %d containers with %d progress calls, want %d", len(cs), calls, n)
	}
	listed, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]bool{}
	for _, c := range listed {
		if c.Status != runtime.StatusRunning || c.Pid <= 0 || c.IP == "" {
			t.Errorf("container %s: status %s pid %d ip %q", c.Name, c.Status, c.Pid, c.IP)
		}
		if ips[c.IP] {
			t.Errorf("address %s given twice", c.IP)
		}
		ips[c.IP] = true
	}
	if len(listed) != n {
		t.Fatalf("listed %d containers, want %d", len(listed), n)
	}
	// The spawn's containers share one overlay superblock where the kernel
	// can clone a detached mount; otherwise each has its own.
	devs := map[string]int{}
	for _, c := range listed {
		devs[rootDevice(t, c.Pid)]++
	}
	if want := map[bool]int{true: 1, false: n}[canCloneDetachedMount(t)]; len(devs) != want {
		t.Errorf("rootfs superblocks of the %d containers: %v, want %d", n, devs, want)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, c := range listed {
		body, err := get(client, "http://"+c.IP+"/")
		if err != nil {
			t.Errorf("container %s at %s: %v", c.Name, c.IP, err)
			continue
		}
		if !strings.Contains(body, "Hello from pirun") {
			t.Errorf("container %s: page %q", c.Name, body)
		}
	}
	if got, err := rt.Get(ctx, "web-3"); err != nil || got.Name != "web-3" {
		t.Errorf("Get(web-3) = %v, %v", got, err)
	}
	if got, err := rt.Get(ctx, cs[0].ID[:8]); err != nil || got.ID != cs[0].ID {
		t.Errorf("Get(id prefix) = %v, %v", got, err)
	}

	// Removing a running container needs force.
	if err := rt.Remove(ctx, []string{cs[0].ID}, false); !errors.Is(err, runtime.ErrRunning) {
		t.Errorf("remove a running container without force: %v, want ErrRunning", err)
	}
	// httpd as PID 1 ignores SIGTERM: stop escalates to SIGKILL.
	start := time.Now()
	if err := rt.Stop(ctx, []string{cs[0].ID, cs[1].ID}, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("stop took %s", d)
	}
	for _, id := range []string{cs[0].ID, cs[1].ID} {
		c, err := rt.Get(ctx, id)
		if err != nil || c.Status != runtime.StatusExited {
			t.Errorf("after stop: %v %v", c, err)
		}
	}
	if err := rt.Stop(ctx, []string{cs[0].ID}, time.Second); err != nil {
		t.Errorf("stopping a stopped container: %v", err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	if err := rt.Remove(ctx, ids, true); err != nil {
		t.Fatal(err)
	}
	if err := rt.Remove(ctx, ids, true); err != nil {
		t.Errorf("removing removed containers: %v", err)
	}
	if left, _ := rt.List(ctx); len(left) != 0 {
		t.Errorf("%d containers left after rm", len(left))
	}
	for ip := range ips {
		if _, err := get(&http.Client{Timeout: 300 * time.Millisecond}, "http://"+ip+"/"); err == nil {
			t.Errorf("%s still answers after rm", ip)
		}
	}
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

func TestBadInput(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	cfg := runtime.Config{Image: imageName, Network: runtime.NetworkNone}

	if _, err := rt.Spawn(ctx, runtime.Config{Image: "no-such-image"}, 1, nil); !errors.Is(err, image.ErrNotFound) {
		t.Errorf("unknown image: %v", err)
	}
	if _, err := rt.Spawn(ctx, cfg, 0, nil); !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("n=0: %v", err)
	}
	for _, name := range []string{"a/b", "..", "-x", strings.Repeat("x", 64), "a b"} {
		c := cfg
		c.Name = name
		if _, err := rt.Start(ctx, c); !errors.Is(err, runtime.ErrInvalidName) {
			t.Errorf("name %q: %v, want ErrInvalidName", name, err)
		}
	}
	c := cfg
	c.Name = "dup"
	first, err := rt.Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, c); !errors.Is(err, runtime.ErrNameInUse) || !strings.Contains(err.Error(), "dup") {
		t.Errorf("duplicate name: %v", err)
	}
	if err := rt.Remove(ctx, []string{first.ID}, true); err != nil {
		t.Fatal(err)
	}

	// A container that exits at once fails the spawn, and none stays.
	c = cfg
	c.Cmd = []string{"sh", "-c", "echo cannot serve >&2; exit 7"}
	if _, err := rt.Spawn(ctx, c, 3, nil); !errors.Is(err, runtime.ErrExited) || !strings.Contains(err.Error(), "cannot serve") {
		t.Errorf("exiting container: %v, want ErrExited with its last log line", err)
	}
	// A command that does not exist.
	c.Cmd = []string{"/no/such/command"}
	if _, err := rt.Start(ctx, c); err == nil {
		t.Errorf("missing command: no error")
	}
	if _, err := rt.Get(ctx, "nothing-here"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("unknown container: %v", err)
	}
	if left, _ := rt.List(ctx); len(left) != 0 {
		t.Errorf("%d containers left behind by failed starts", len(left))
	}
}

// An exhausted subnet fails before any container starts.
func TestSubnetExhausted(t *testing.T) {
	s := imageStore(t)
	state := t.TempDir()
	rt, err := runtime.New(state, s, runtime.WithNetworkOptions(
		network.WithBridgeName("pirun-tfull"), network.WithSubnet(netip.MustParsePrefix("10.125.0.0/29"))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = rt.Spawn(ctx, runtime.Config{Image: imageName}, 10, nil)
	if !errors.Is(err, network.ErrSubnetFull) {
		t.Fatalf("10 containers in a /29: %v, want ErrSubnetFull", err)
	}
	if left, _ := rt.List(ctx); len(left) != 0 {
		t.Errorf("%d containers left", len(left))
	}
	assertNothingLeft(t, state, "pirun-tfull")
}

// Cancelling a foreground run (Ctrl-C) kills the container.
func TestRunCancel(t *testing.T) {
	rt := newRuntime(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel once the container runs (however long a loaded machine
	// takes to start it).
	var cancelled time.Time
	go func() {
		defer cancel()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if cs, _ := rt.List(context.Background()); len(cs) == 1 && cs[0].Status == runtime.StatusRunning {
				time.Sleep(100 * time.Millisecond)
				break
			}
		}
		cancelled = time.Now()
	}()
	c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Cmd: []string{"sleep", "60"}}, runtime.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(cancelled); d > 10*time.Second || code != 128+9 {
		t.Errorf("cancelled run: exit %d %s after the cancel, want 137 soon after it", code, d)
	}
	if err := rt.Remove(context.Background(), []string{c.ID}, false); err != nil {
		t.Fatal(err)
	}
}

// cgroupValue reads a limit of the cgroup of pid: the v1 file of a
// controller, or the v2 file when the host runs the unified hierarchy.
func cgroupValue(t *testing.T, pid int, controller, v1file, v2file string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var p string
		switch {
		case parts[0] == "0" && parts[1] == "" && v2file != "" && isUnified():
			p = filepath.Join("/sys/fs/cgroup", underMountRoot("/sys/fs/cgroup", parts[2]), v2file)
		case strings.Contains(","+parts[1]+",", ","+controller+","):
			mnt := filepath.Join("/sys/fs/cgroup", parts[1])
			p = filepath.Join(mnt, underMountRoot(mnt, parts[2]), v1file)
		default:
			continue
		}
		v, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	t.Fatalf("no %s cgroup for pid %d in %s", controller, pid, b)
	return ""
}

// underMountRoot makes a path of /proc/PID/cgroup relative to the root of
// the cgroup mount at mnt: in a container that shares the host's cgroup
// namespace (Docker on cgroup v1) the paths are the host's, from
// /docker/<id>, and the mount's root is that directory.
func underMountRoot(mnt, cgPath string) string {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
	if err != nil || len(mounts) == 0 || mounts[0].Root == "/" {
		return cgPath
	}
	if rel, ok := strings.CutPrefix(cgPath, mounts[0].Root); ok {
		return rel
	}
	return cgPath
}

func isUnified() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// --memory, --cpus and --pids-limit reach each container's cgroup, and a
// container that allocates past its memory limit is OOM-killed.
func TestResourceLimits(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	res := runtime.Resources{Memory: 8 << 20, CPUs: 0.5, PidsLimit: 20}
	cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Name: "lim", Resources: res}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Resources != res {
			t.Errorf("record of %s: resources %+v, want %+v", c.Name, c.Resources, res)
		}
		if got := cgroupValue(t, c.Pid, "memory", "memory.limit_in_bytes", "memory.max"); got != "8388608" {
			t.Errorf("%s: memory limit %s, want 8388608", c.Name, got)
		}
		if got := cgroupValue(t, c.Pid, "pids", "pids.max", "pids.max"); got != "20" {
			t.Errorf("%s: pids limit %s, want 20", c.Name, got)
		}
		if got := cgroupValue(t, c.Pid, "cpu", "cpu.cfs_quota_us", "cpu.max"); got != "50000" && got != "50000 100000" {
			t.Errorf("%s: cpu quota %s, want 50000 per 100000", c.Name, got)
		}
	}
	// 40 MB in a shell variable, under an 8 MB limit.
	var out bytes.Buffer
	c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Resources: runtime.Resources{Memory: 8 << 20},
		Cmd: []string{"sh", "-c", `x=$(busybox head -c 40000000 /dev/zero | busybox tr "\0" a); echo survived ${#x}`}},
		runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 137 || strings.Contains(out.String(), "survived") {
		t.Errorf("allocating 40 MB under an 8 MB limit: exit %d, output %q; want an OOM kill (137)", code, out.String())
	}
	if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []runtime.Resources{{Memory: 1 << 20}, {CPUs: -1}, {PidsLimit: -5}} {
		if _, err := rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Resources: bad}); !errors.Is(err, runtime.ErrInvalidConfig) {
			t.Errorf("resources %+v: %v, want ErrInvalidConfig", bad, err)
		}
	}
}

// The defaults confine a container: it cannot mount, load kernel modules,
// see the host's processes, or write outside its tmpfs mounts.
func TestConfinement(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	script := `
mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED
mount -o remount,rw / 2>/dev/null && echo REMOUNTED
echo test > /proc/sys/kernel/modprobe 2>/dev/null && echo SYSCTL-WRITTEN
echo x > /tmp/m.ko; busybox insmod /tmp/m.ko 2>/dev/null && echo MODULE-LOADED
echo procs $(ls /proc | busybox grep -c '^[0-9]')
echo x > /etc/x 2>/dev/null && echo ETC-WRITTEN
echo x > /sys/kernel/x 2>/dev/null && echo SYS-WRITTEN
echo x > /tmp/x && echo TMP-OK
cat /proc/self/status | busybox grep -E '^(CapEff|CapBnd|NoNewPrivs)'
`
	var out bytes.Buffer
	c, _, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Cmd: []string{"sh", "-c", script}},
		runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Remove(ctx, []string{c.ID}, true)
	got := out.String()
	for _, bad := range []string{"MOUNTED", "REMOUNTED", "SYSCTL-WRITTEN", "MODULE-LOADED", "ETC-WRITTEN", "SYS-WRITTEN"} {
		if strings.Contains(got, bad) {
			t.Errorf("container could do it: %s\n%s", bad, got)
		}
	}
	// Only its own processes: sh, and the subshells of this script.
	if !strings.Contains(got, "TMP-OK") || !strings.Contains(got, "NoNewPrivs:\t1") {
		t.Errorf("want a writable /tmp and no-new-privileges:\n%s", got)
	}
	var procs int
	for _, line := range strings.Split(got, "\n") {
		if n, err := fmt.Sscanf(line, "procs %d", &procs); n == 1 && err == nil {
			break
		}
	}
	if procs < 1 || procs > 5 {
		t.Errorf("the container sees %d processes, want only its own few:\n%s", procs, got)
	}
	// CAP_SYS_ADMIN (21) and CAP_SYS_MODULE (16) are neither effective nor
	// in the bounding set (so no module loads even where the kernel has
	// module support; this one has none).
	seen := 0
	for _, line := range strings.Split(got, "\n") {
		for _, set := range []string{"CapEff:\t", "CapBnd:\t"} {
			if v, ok := strings.CutPrefix(line, set); ok {
				seen++
				var caps uint64
				fmt.Sscanf(v, "%x", &caps)
				if caps&(1<<21) != 0 || caps&(1<<16) != 0 {
					t.Errorf("%s%s includes CAP_SYS_ADMIN or CAP_SYS_MODULE", set, v)
				}
			}
		}
	}
	if seen != 2 {
		t.Errorf("no CapEff/CapBnd lines:\n%s", got)
	}
}

// --device makes a host device node usable in the container, and only it.
func TestDevice(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	var out bytes.Buffer
	c, code, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone,
		Devices: []runtime.Device{{Host: "/dev/zero", Container: "/dev/myzero"}},
		Cmd:     []string{"sh", "-c", "busybox head -c 3 /dev/myzero | busybox od -An -tx1"}},
		runtime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Remove(ctx, []string{c.ID}, true)
	if code != 0 || strings.TrimSpace(out.String()) != "00 00 00" {
		t.Errorf("reading /dev/myzero: exit %d, %q", code, out.String())
	}
	_, err = rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone,
		Devices: []runtime.Device{{Host: "/etc/hostname", Container: "/dev/x"}}})
	if !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("a regular file as a device: %v, want ErrInvalidConfig", err)
	}
	for in, ok := range map[string]bool{"/dev/gpiomem": true, "/dev/zero:/dev/z": true, "dev/zero": false, "/dev/zero:/etc/z": false, "/dev/zero:/dev/../etc": false} {
		if _, err := runtime.ParseDevice(in); (err == nil) != ok {
			t.Errorf("ParseDevice(%q) = %v, want ok=%v", in, err, ok)
		}
	}
}

// With Cgroup = CgroupGroup the limits sit on one cgroup for the whole
// spawn group; each container has a child cgroup of it, without limits of
// its own. The group's cgroup goes with its last container.
func TestGroupCgroup(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	// The limit is the whole group's, and the containers' inits (pirun
	// re-executed, a Go program) start several at once within it: room
	// for them.
	res := runtime.Resources{Memory: 128 << 20, CPUs: 0.5, PidsLimit: 30}
	cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Name: "grp", Resources: res, Cgroup: runtime.CgroupGroup}, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	group := cs[0].CgroupGroup
	if !strings.HasPrefix(group, "/pirun/g-") {
		t.Fatalf("group cgroup %q, want /pirun/g-…", group)
	}
	for _, c := range cs {
		if c.CgroupGroup != group || c.CgroupPath != group+"/"+c.ID {
			t.Errorf("%s: cgroup %s in group %s, want %s/%s", c.Name, c.CgroupPath, c.CgroupGroup, group, c.ID)
		}
		if got := cgroupValue(t, c.Pid, "memory", "../memory.limit_in_bytes", "../memory.max"); got != "134217728" {
			t.Errorf("%s: group memory limit %s, want 134217728", c.Name, got)
		}
		if got := cgroupValue(t, c.Pid, "pids", "../pids.max", "../pids.max"); got != "30" {
			t.Errorf("%s: group pids limit %s, want 30", c.Name, got)
		}
		if got := cgroupValue(t, c.Pid, "cpu", "../cpu.cfs_quota_us", "../cpu.max"); got != "50000" && got != "50000 100000" {
			t.Errorf("%s: group cpu quota %s, want 50000 per 100000", c.Name, got)
		}
		// The container's own cgroup has no limit: the group's counts.
		if got := cgroupValue(t, c.Pid, "pids", "pids.max", "pids.max"); got != "max" {
			t.Errorf("%s: own pids limit %s, want max", c.Name, got)
		}
	}
	groupDirs := func() []string {
		m, _ := filepath.Glob("/sys/fs/cgroup/*" + group)
		u, _ := filepath.Glob("/sys/fs/cgroup/unified" + group)
		return append(m, u...)
	}
	if len(groupDirs()) == 0 {
		t.Fatalf("no directory for group cgroup %s", group)
	}
	if err := rt.Remove(ctx, []string{cs[0].ID}, true); err != nil {
		t.Fatal(err)
	}
	if len(groupDirs()) == 0 {
		t.Errorf("group cgroup %s removed while two of its containers run", group)
	}
	if err := rt.Remove(ctx, []string{cs[1].ID, cs[2].ID}, true); err != nil {
		t.Fatal(err)
	}
	if left := groupDirs(); len(left) > 0 {
		t.Errorf("leak: group cgroup left in %v", left)
	}
	if _, err := rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Cgroup: "pod"}); !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("cgroup mode pod: %v, want ErrInvalidConfig", err)
	}
}

// A restart policy restarts exited containers while the process that
// started them supervises; stop ends it.
func TestRestartPolicy(t *testing.T) {
	rt := newRuntime(t)
	ctx := context.Background()
	exitAfter := func(code string) []string { return []string{"sh", "-c", "sleep 0.3; exit " + code} }
	oom := []string{"sh", "-c", `sleep 0.3; x=$(busybox head -c 40000000 /dev/zero | busybox tr "\0" a)`}
	cases := []struct {
		name, policy string
		cmd          []string
		res          runtime.Resources
		code         int
		restarts     bool
		network      string
	}{
		{"fail", runtime.RestartOnFailure, exitAfter("3"), runtime.Resources{}, 3, true, runtime.NetworkNone},
		{"oom", runtime.RestartOnFailure, oom, runtime.Resources{Memory: 8 << 20}, 137, true, runtime.NetworkNone},
		{"ok", runtime.RestartOnFailure, exitAfter("0"), runtime.Resources{}, 0, false, runtime.NetworkNone},
		{"always", runtime.RestartAlways, exitAfter("0"), runtime.Resources{}, 0, true, runtime.NetworkNone},
		// Restarted at once on its address: the old veth may not be gone yet.
		{"bridged", runtime.RestartOnFailure, exitAfter("3"), runtime.Resources{}, 3, true, runtime.NetworkBridge},
	}
	var ids []string
	for _, tc := range cases {
		cs, err := rt.Spawn(ctx, runtime.Config{Image: imageName, Network: tc.network, Name: tc.name, Cmd: tc.cmd, Resources: tc.res, Restart: tc.policy}, 1, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cs[0].Supervisor != os.Getpid() || cs[0].Restart != tc.policy {
			t.Errorf("%s: record says supervisor %d, policy %q", tc.name, cs[0].Supervisor, cs[0].Restart)
		}
		ids = append(ids, cs[0].ID)
	}
	// Back-offs of 0.1, 0.2, 0.4 s and runs of 0.3 s: two restarts in 3 s
	// (on a loaded machine, starts take longer).
	deadline := time.Now().Add(30 * time.Second)
	for i, tc := range cases {
		for {
			c, err := rt.Get(ctx, ids[i])
			if err != nil {
				t.Fatal(err)
			}
			enough := c.Restarts >= 2 && c.ExitCode != nil
			if !tc.restarts {
				enough = c.Status == runtime.StatusExited && c.ExitCode != nil
			}
			if enough || time.Now().After(deadline) {
				if c.ExitCode == nil || *c.ExitCode != tc.code {
					t.Errorf("%s: exit code %v, want %d", tc.name, c.ExitCode, tc.code)
				}
				if tc.restarts && c.Restarts < 2 {
					t.Errorf("%s: %d restarts in 30 s, want at least 2", tc.name, c.Restarts)
				}
				if !tc.restarts && (c.Restarts != 0 || c.Status != runtime.StatusExited) {
					t.Errorf("%s: %s after %d restarts, want exited and never restarted", tc.name, c.Status, c.Restarts)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// A stop is not a failure: nothing restarts afterwards, and the
	// supervision ends.
	if err := rt.Stop(ctx, ids, time.Second); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := rt.Supervise(sctx); err != nil {
		t.Errorf("supervise after stop: %v, want nil (nothing left to watch)", err)
	}
	before := map[string]int{}
	for _, id := range ids {
		c, _ := rt.Get(ctx, id)
		before[id] = c.Restarts
	}
	time.Sleep(time.Second)
	for _, id := range ids {
		c, err := rt.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status != runtime.StatusExited || c.Restarts != before[id] {
			t.Errorf("%s after stop: %s, %d restarts (was %d); want exited, no more restarts", c.Name, c.Status, c.Restarts, before[id])
		}
	}
	if _, err := rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Restart: "sometimes"}); !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("restart policy sometimes: %v, want ErrInvalidConfig", err)
	}
}

// Docker's default seccomp profile filters a container's system calls
// (where the build links libseccomp); --seccomp unconfined turns it off.
func TestSeccomp(t *testing.T) {
	if !runtime.SeccompSupported {
		t.Skip("built without the seccomp tag (libseccomp): no system call filter to test")
	}
	rt := newRuntime(t)
	ctx := context.Background()
	script := `busybox grep '^Seccomp:' /proc/self/status; busybox unshare -U true 2>/dev/null && echo USERNS-MADE`
	run := func(mode string) string {
		var out bytes.Buffer
		c, _, err := rt.Run(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Seccomp: mode, Cmd: []string{"sh", "-c", script}},
			runtime.Stdio{Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	def, unconfined := run(""), run(runtime.SeccompUnconfined)
	if !strings.Contains(def, "Seccomp:\t2") {
		t.Errorf("default: no seccomp filter on the container's process:\n%s", def)
	}
	if !strings.Contains(unconfined, "Seccomp:\t0") {
		t.Errorf("unconfined: a seccomp filter on the container's process:\n%s", unconfined)
	}
	// unshare(CLONE_NEWUSER) needs no capability: only the profile stops it.
	if strings.Contains(unconfined, "USERNS-MADE") && strings.Contains(def, "USERNS-MADE") {
		t.Errorf("default profile: the container made a user namespace:\n%s", def)
	} else if !strings.Contains(unconfined, "USERNS-MADE") {
		t.Logf("unconfined container could not make a user namespace either; that check proves nothing here:\n%s", unconfined)
	}
	if _, err := rt.Start(ctx, runtime.Config{Image: imageName, Network: runtime.NetworkNone, Seccomp: "lenient"}); !errors.Is(err, runtime.ErrInvalidConfig) {
		t.Errorf("seccomp lenient: %v, want ErrInvalidConfig", err)
	}
}

// rootDevice returns the device (major:minor) of the mount at / of pid.
func rootDevice(t *testing.T, pid int) string {
	t.Helper()
	mounts, err := mountinfo.PidMountInfo(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.Mountpoint == "/" {
			return fmt.Sprintf("%d:%d", m.Major, m.Minor)
		}
	}
	t.Fatalf("pid %d: no mount at /", pid)
	return ""
}

// canCloneDetachedMount reports whether this kernel lets open_tree clone a
// mount made by fsmount, as the runtime's shared rootfs needs.
func canCloneDetachedMount(t *testing.T) bool {
	t.Helper()
	fd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if unix.FsconfigCreate(fd) != nil {
		return false
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(mfd)
	c, err := unix.OpenTree(mfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return false
	}
	unix.Close(c)
	return true
}
