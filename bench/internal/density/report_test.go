package density

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestStat(t *testing.T) {
	for _, tc := range []struct {
		in          []float64
		med, lo, hi float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
	} {
		s := stat(tc.in)
		if s.Median != tc.med || s.Min != tc.lo || s.Max != tc.hi || s.N != len(tc.in) {
			t.Errorf("stat(%v) = %+v", tc.in, s)
		}
	}
}

func TestSplitQuoted(t *testing.T) {
	got := splitQuoted(`FORWARD -m comment --comment "netavark firewall plugin rules" -j NETAVARK_FORWARD`)
	want := []string{"FORWARD", "-m", "comment", "--comment", "netavark firewall plugin rules", "-j", "NETAVARK_FORWARD"}
	if !slices.Equal(got, want) {
		t.Errorf("splitQuoted = %q, want %q", got, want)
	}
}

func TestInContainers(t *testing.T) {
	id := strings.Repeat("ab", 32)
	ids := map[string]bool{id: true}
	for cg, want := range map[string]bool{
		"4:memory:/docker/" + id + "\n":                       true,
		"4:memory:/libpod_parent/libpod-" + id + "\n":         true,
		"4:memory:/system.slice/docker-" + id + ".scope\n":    true,
		"0::/pirun/" + id + "\n":                              true,
		"4:memory:/docker/" + strings.Repeat("cd", 32) + "\n": false,
		"": false,
	} {
		if got := inContainers(cg, ids); got != want {
			t.Errorf("inContainers(%q) = %v", cg, got)
		}
	}
}

func TestReport(t *testing.T) {
	runs := []Run{
		{Runtime: "pirun", N: 100, Started: 100, Answered: 100, AllAnsweringS: 10, Rate: 10, MemPerCtr: 300},
		{Runtime: "pirun", N: 100, Started: 100, Answered: 100, AllAnsweringS: 12, Rate: 8.3, MemPerCtr: 320},
		{Runtime: "docker", N: 100, Started: 100, Answered: 100, AllAnsweringS: 60, Rate: 1.7, MemPerCtr: 4500},
		{Runtime: "podman", N: 100, Skipped: "podman not installed"},
	}
	var b bytes.Buffer
	WriteMarkdown(&b, &Results{Runs: runs, Host: map[string]string{}}, "density.png")
	md := b.String()
	for _, want := range []string{"| pirun | 100 | 2 | 100/100 | 11.0 (10.0–12.0)", "| docker | 100 | 1 |", "14.5×", "skipped: podman not installed"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if err := WriteChart(filepath.Join(t.TempDir(), "c.png"), runs); err != nil {
		t.Fatal(err)
	}
}
