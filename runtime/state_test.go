package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pirun/pirun/network"
	"net/netip"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"web-1", true},
		{"a.b_c-9", true},
		{"9lives", true},
		{strings.Repeat("x", MaxNameLen), true},
		{"", false},
		{strings.Repeat("x", MaxNameLen+1), false},
		{"-web", false},
		{".hidden", false},
		{"a/b", false},
		{"..", false},
		{"a b", false},
		{"ünï", false},
		{"web:1", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q): %v is not ErrInvalidName", tc.name, err)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	s := store{dir: t.TempDir()}
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	id := strings.Repeat("ab", 32)
	code := 3
	c := &Container{
		ID: id, Name: "web-1", Image: "docker.io/library/x:latest", Command: []string{"httpd", "-f"},
		Pid: 42, PidStart: 4242, Phase: phaseStarted, Created: time.Unix(1700000000, 0).UTC(), ExitCode: &code,
		Network: NetworkBridge, IP: "10.123.0.2",
		Endpoint: &network.Endpoint{Network: "pirun0", ContainerID: id, Address: netip.MustParsePrefix("10.123.0.2/16"),
			Gateway: netip.MustParseAddr("10.123.0.1"), HostIf: "prabababab"},
		LogPath: filepath.Join(s.containerDir(id), "log"), RootfsDir: filepath.Join(s.containerDir(id), "rootfs"),
	}
	if err := os.MkdirAll(s.containerDir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.write(c); err != nil {
		t.Fatal(err)
	}
	got, err := s.read(id)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("read back %+v, want %+v", got, c)
	}
	// No temp file is left next to the record.
	ents, _ := os.ReadDir(s.containerDir(id))
	if len(ents) != 1 {
		t.Errorf("container dir holds %d entries, want only state.json", len(ents))
	}
	// A corrupt record is an error naming the file, never a panic or a zero record.
	if err := os.WriteFile(s.stateFile(id), []byte(`{"id": "ab`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.read(id); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt record: %v", err)
	}
	if _, err := s.read(strings.Repeat("cd", 32)); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing record: %v", err)
	}
}

func TestNamesAndResolve(t *testing.T) {
	s := store{dir: t.TempDir()}
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	a, b := "aaaa"+strings.Repeat("1", 60), "aaab"+strings.Repeat("2", 60)
	for _, id := range []string{a, b} {
		if err := os.MkdirAll(s.containerDir(id), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.reserveName("web", a); err != nil {
		t.Fatal(err)
	}
	if err := s.reserveName("web", b); !errors.Is(err, ErrNameInUse) {
		t.Errorf("second reservation: %v", err)
	}
	for ref, want := range map[string]string{"web": a, a: a, "aaab": b, "aaaa1": a} {
		if got, err := s.resolve(ref); err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	if _, err := s.resolve("aaa"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("ambiguous prefix: %v", err)
	}
	for _, ref := range []string{"nope", "../x", "", "ffff"} {
		if _, err := s.resolve(ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("resolve(%q): %v, want ErrNotFound", ref, err)
		}
	}
	// Releasing a name that now points elsewhere leaves it alone.
	if err := s.releaseName("web", b); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.nameTarget("web"); !ok {
		t.Error("releaseName removed a name owned by another container")
	}
	if err := s.releaseName("web", a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(s.namesDir(), "web")); !os.IsNotExist(err) {
		t.Errorf("name still reserved: %v", err)
	}
}

func TestDefaultPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/rpi-busybox-httpd:latest": "rpi-busybox-httpd",
		"127.0.0.1:5000/x/web@sha256:abcd":           "web",
		"docker.io/library/_odd:1":                   "odd",
		"docker.io/library/___:1":                    "pirun",
	} {
		if got := defaultPrefix(in); got != want {
			t.Errorf("defaultPrefix(%q) = %q, want %q", in, got, want)
		}
		if err := ValidateName(defaultPrefix(in) + "-10000"); err != nil {
			t.Errorf("defaultPrefix(%q) gives invalid names: %v", in, err)
		}
	}
}

func TestNaturalLess(t *testing.T) {
	if !naturalLess("web-2", "web-10") || naturalLess("web-10", "web-2") || !naturalLess("a-1", "b-0") {
		t.Error("naturalLess does not order web-2 before web-10")
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"})
	want := []string{"PATH=/bin", "A=2", "B=3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
	if got := mergeEnv(nil, nil); len(got) != 1 || !strings.HasPrefix(got[0], "PATH=") {
		t.Errorf("mergeEnv without PATH = %q", got)
	}
}

func TestResolveUser(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(bottom, "etc"), 0o755)
	os.WriteFile(filepath.Join(bottom, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/www:/bin/false\n"), 0o644)
	os.WriteFile(filepath.Join(bottom, "etc/group"), []byte("root:x:0:\nweb:x:80:\n"), 0o644)
	dirs := []string{top, bottom}
	for user, want := range map[string][2]int{"": {0, 0}, "1000": {1000, 1000}, "1000:5": {1000, 5}, "www": {33, 34}, "www:web": {33, 80}} {
		uid, gid, _, err := resolveUser(user, dirs)
		if err != nil || uid != want[0] || gid != want[1] {
			t.Errorf("resolveUser(%q) = %d:%d %v, want %v", user, uid, gid, err, want)
		}
	}
	for _, user := range []string{"nobody-here", "www:nogroup", "-1"} {
		if _, _, _, err := resolveUser(user, dirs); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("resolveUser(%q): %v, want ErrInvalidConfig", user, err)
		}
	}
}

// A name left pointing at a container that is gone is taken over; a live
// one is not.
func TestReserveStaleName(t *testing.T) {
	s := store{dir: t.TempDir()}
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	gone, live, next := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
	for _, id := range []string{live, next} {
		os.MkdirAll(s.containerDir(id), 0o700)
	}
	if err := s.reserveName("stale", gone); err != nil {
		t.Fatal(err)
	}
	if err := s.reserveName("stale", next); err != nil {
		t.Fatalf("taking over a stale name: %v", err)
	}
	if id, _ := s.nameTarget("stale"); id != next {
		t.Errorf("stale name now points at %q", id)
	}
	if err := s.reserveName("stale", live); !errors.Is(err, ErrNameInUse) {
		t.Errorf("taking a live name: %v", err)
	}
	if ents, _ := os.ReadDir(s.namesDir()); len(ents) != 1 {
		t.Errorf("%d entries in names/, want 1 (no temp link left)", len(ents))
	}
}

func TestParseLimits(t *testing.T) {
	for in, want := range map[string]int64{"8m": 8 << 20, "512k": 512 << 10, "1g": 1 << 30, "1048576": 1 << 20, "8MB": 8 << 20} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"10x", "", "-1m", "m"} {
		if _, err := ParseMemory(in); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseMemory(%q): %v, want ErrInvalidConfig", in, err)
		}
	}
	if got, err := ParseCPUs("0.5"); err != nil || got != 0.5 {
		t.Errorf("ParseCPUs(0.5) = %v, %v", got, err)
	}
	for _, in := range []string{"half", "-1", "NaN", "Inf"} {
		if _, err := ParseCPUs(in); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseCPUs(%q): %v, want ErrInvalidConfig", in, err)
		}
	}
}

func TestCapSet(t *testing.T) {
	caps, err := capSet([]string{"net_admin", "CAP_SYS_TIME"}, []string{"NET_RAW", "mknod"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_CHOWN"} {
		if !slices.Contains(caps, want) {
			t.Errorf("caps %v lack %s", caps, want)
		}
	}
	for _, gone := range []string{"CAP_NET_RAW", "CAP_MKNOD", "CAP_SYS_ADMIN"} {
		if slices.Contains(caps, gone) {
			t.Errorf("caps %v include %s", caps, gone)
		}
	}
	if caps, _ := capSet(nil, []string{"ALL"}); len(caps) != 0 {
		t.Errorf("--cap-drop ALL left %v", caps)
	}
	if caps, _ := capSet([]string{"ALL"}, nil); !slices.Contains(caps, "CAP_SYS_ADMIN") {
		t.Errorf("--cap-add ALL: %v", caps)
	}
	if _, err := capSet([]string{"FLY"}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("unknown capability: %v", err)
	}
}

// Whatever bytes a state file holds, reading it gives an error or a record
// of that container that names only what pirun makes: never a panic, never
// another container's cgroup or directory.
func FuzzStateRecord(f *testing.F) {
	id := strings.Repeat("ab", 32)
	f.Add([]byte(`{"id":"` + id + `","name":"web-1","phase":"started","pid":42,"cgroup_path":"/pirun/` + id + `"}`))
	f.Add([]byte(`{"id":"` + id + `","cgroup_path":"/pirun/g-0123456789ab/` + id + `","cgroup_group":"/pirun/g-0123456789ab"}`))
	f.Add([]byte(`{"id":"` + id + `","cgroup_path":"/../../sys"}`))
	f.Add([]byte(`{"id":"../../etc"}`))
	f.Add([]byte(`{"id":"` + id + `","name":"../x","log_path":"/etc/passwd"}`))
	f.Add([]byte(`{"id":"` + id + `","endpoint":{"container_id":"x","address":"10.0.0.2/24"}}`))
	f.Add([]byte(`{"id": "ab`))
	f.Add([]byte(`null`))
	s := store{dir: "/run/pirun"}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := s.decode(id, b)
		if err != nil {
			if !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("error does not say the record is corrupt: %v", err)
			}
			return
		}
		if c.ID != id {
			t.Fatalf("record of %q read as %q", c.ID, id)
		}
		if c.CgroupPath != "" && !strings.HasPrefix(c.CgroupPath, "/"+cgroupParent+"/") || strings.Contains(c.CgroupPath, "..") {
			t.Fatalf("cgroup path %q outside /%s", c.CgroupPath, cgroupParent)
		}
		if filepath.Dir(c.LogPath) != s.containerDir(id) || filepath.Dir(c.RootfsDir) != s.containerDir(id) {
			t.Fatalf("paths %q, %q outside the container's directory", c.LogPath, c.RootfsDir)
		}
		if c.Name != "" && ValidateName(c.Name) != nil {
			t.Fatalf("invalid name %q accepted", c.Name)
		}
	})
}
