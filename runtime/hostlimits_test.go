package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckHostLimits(t *testing.T) {
	fake := func(t *testing.T, files map[string]string) string {
		dir := t.TempDir()
		for name, data := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(data+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	base := map[string]string{
		"loadavg":                     "0.93 1.96 4.38 3/118 3143",
		"sys/kernel/pid_max":          "32768",
		"sys/kernel/threads-max":      "192730",
		"sys/user/max_net_namespaces": "96365",
		"sys/user/max_mnt_namespaces": "96365",
		"sys/user/max_pid_namespaces": "96365",
		"sys/user/max_ipc_namespaces": "96365",
		"sys/user/max_uts_namespaces": "96365",
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range base {
			m[a] = b
		}
		m[k] = v
		return m
	}
	for _, tc := range []struct {
		name        string
		files       map[string]string
		n, existing int
		want        string // "" for success, else a word of the error
	}{
		{"10,000 fit in pid_max 32768", base, 10000, 0, ""},
		// 32768 - 118 - 1024 = 31626 free: 15813 containers of 2 pids.
		{"the last that fit", base, 15813, 0, ""},
		{"one too many for pid_max", base, 15814, 0, "kernel.pid_max"},
		{"threads running count", with("loadavg", "1 1 1 2/30000 5"), 1000, 0, "kernel.pid_max is 32768 and 30000 threads run"},
		{"threads-max", with("sys/kernel/threads-max", "4000"), 1800, 0, "kernel.threads-max"},
		{"namespaces with the existing ones", with("sys/user/max_net_namespaces", "1000"), 10, 995, "user.max_net_namespaces"},
		{"unreadable limits are not checked", map[string]string{}, 1 << 20, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkHostLimits(fake(t, tc.files), tc.n, tc.existing)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("checkHostLimits(%d): %v", tc.n, err)
			case tc.want != "" && (!errors.Is(err, ErrHostLimit) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("checkHostLimits(%d): %v, want ErrHostLimit naming %q", tc.n, err, tc.want)
			}
		})
	}
}
