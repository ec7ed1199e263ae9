package density

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// Results is what one invocation of the harness measured, as written to
// the JSON file.
type Results struct {
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Host     map[string]string `json:"host"`
	Versions map[string]string `json:"versions"`
	Settings map[string]string `json:"settings"`
	// HostChanges lists what the runs changed on the host and the harness
	// had to undo, or could not (iptables chains, sysctls).
	HostChanges []string `json:"host_changes,omitempty"`
	Runs        []Run    `json:"runs"`
}

// ReadResults reads results files and returns them merged (runs of all).
func ReadResults(paths ...string) (*Results, error) {
	var all Results
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r Results
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if all.Host == nil {
			all = r
			continue
		}
		all.Runs = append(all.Runs, r.Runs...)
		all.HostChanges = append(all.HostChanges, r.HostChanges...)
		if r.Finished.After(all.Finished) {
			all.Finished = r.Finished
		}
	}
	return &all, nil
}

// Stat is the median and range of a metric over the runs of one cell.
type Stat struct {
	Median, Min, Max float64
	N                int
}

func stat(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	s := slices.Clone(vs)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: m, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Cell is the summary of one runtime at one N.
type Cell struct {
	Runtime string
	N       int
	Runs    int
	Skipped string
	Errors  []string
	Notes   []string

	Started, Answered, AllAnswering, Rate         Stat
	Mem, Slab, KernelStack, PageTables, HelperPSS Stat
	HelpersPerCtr, Teardown                       Stat
	TimedOut                                      int
	// Leftovers: the worst run.
	Leftovers Leftovers
}

// Runtimes in the order of the report.
var order = []string{"pirun", "pirun-restart", "docker", "docker-tuned", "podman"}

func rank(name string) int {
	if i := slices.Index(order, name); i >= 0 {
		return i
	}
	return len(order)
}

// Summarize groups runs by runtime and N.
func Summarize(runs []Run) []Cell {
	type key struct {
		rt string
		n  int
	}
	groups := map[key][]Run{}
	for _, r := range runs {
		k := key{r.Runtime, r.N}
		groups[k] = append(groups[k], r)
	}
	var cells []Cell
	for k, rs := range groups {
		c := Cell{Runtime: k.rt, N: k.n, Leftovers: Leftovers{BridgePorts: -1}}
		var started, answered, all, rate, mem, slab, ks, pt, hp, hpc, td []float64
		for _, r := range rs {
			if r.Skipped != "" {
				c.Skipped = r.Skipped
				continue
			}
			if r.Note != "" && !slices.Contains(c.Notes, r.Note) {
				c.Notes = append(c.Notes, r.Note)
			}
			if r.Error != "" && !slices.Contains(c.Errors, r.Error) {
				c.Errors = append(c.Errors, r.Error)
			}
			c.Runs++
			if r.TimedOut {
				c.TimedOut++
			}
			started = append(started, float64(r.Started))
			answered = append(answered, float64(r.Answered))
			if r.Answered > 0 {
				all = append(all, r.AllAnsweringS)
				rate = append(rate, r.Rate)
			}
			if r.Started > 0 {
				mem = append(mem, r.MemPerCtr)
				slab = append(slab, r.SlabPerCtr)
				ks = append(ks, r.KernelStackPerCt)
				pt = append(pt, r.PageTablesPerCtr)
				hp = append(hp, r.HelperPSSPerCtr)
				hpc = append(hpc, r.HelpersPerCtr)
				td = append(td, r.TeardownS)
			}
			l := r.Leftovers
			c.Leftovers.Containers = max(c.Leftovers.Containers, l.Containers)
			c.Leftovers.Processes = max(c.Leftovers.Processes, l.Processes)
			c.Leftovers.BridgePorts = max(c.Leftovers.BridgePorts, l.BridgePorts)
			c.Leftovers.Mounts = max(c.Leftovers.Mounts, l.Mounts)
			c.Leftovers.Helpers = max(c.Leftovers.Helpers, l.Helpers)
		}
		c.Started, c.Answered, c.AllAnswering, c.Rate = stat(started), stat(answered), stat(all), stat(rate)
		c.Mem, c.Slab, c.KernelStack, c.PageTables, c.HelperPSS = stat(mem), stat(slab), stat(ks), stat(pt), stat(hp)
		c.HelpersPerCtr, c.Teardown = stat(hpc), stat(td)
		cells = append(cells, c)
	}
	sort.Slice(cells, func(i, j int) bool {
		if cells[i].N != cells[j].N {
			return cells[i].N < cells[j].N
		}
		return rank(cells[i].Runtime) < rank(cells[j].Runtime)
	})
	return cells
}

func rng(s Stat, prec int) string {
	if s.N == 0 {
		return "–"
	}
	f := func(v float64) string { return fmt.Sprintf("%.*f", prec, v) }
	if s.N == 1 || f(s.Min) == f(s.Max) {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

func med(s Stat, prec int) string {
	if s.N == 0 {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, s.Median)
}

// ratio is a's median over b's; none when either is not positive (a
// MemAvailable that rose during a run: the kernel was freeing memory of
// something else, and the reading says nothing).
func ratio(a, b Stat) string {
	if a.N == 0 || b.N == 0 || b.Median <= 0 || a.Median <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f×", a.Median/b.Median)
}

// WriteMarkdown writes the summary table, the ratios to pirun and the notes.
func WriteMarkdown(w io.Writer, res *Results, chart string) {
	cells := Summarize(res.Runs)
	pirun := map[int]Cell{}
	for _, c := range cells {
		if c.Runtime == "pirun" && c.Runs > 0 {
			pirun[c.N] = c
		}
	}
	fmt.Fprintf(w, "# Density: pirun, Docker and podman\n\n")
	fmt.Fprintf(w, "Measured %s on %s (%s CPUs, %s MiB, kernel %s) by `make bench` (bench/cmd/density).\n\n",
		res.Started.Format("2006-01-02"), res.Host["cpu"], res.Host["cpus"], res.Host["mem_mib"], res.Host["kernel"])
	fmt.Fprintf(w, "Each cell is the median over the runs (runtimes alternate, each run from scratch), with the range in brackets. ")
	fmt.Fprintf(w, "Memory is the drop of MemAvailable per started container, page cache dropped before and after; ")
	fmt.Fprintf(w, "slab, kernel stacks, page tables and helper PSS are parts of it (helper PSS: daemons, shims, conmon, proxies, their growth). ")
	fmt.Fprintf(w, "Start: seconds from the first start until the last container answered HTTP; rate: answering containers per second. ")
	fmt.Fprintf(w, "× pirun: the runtime's median over pirun's (memory per container; time until all answer).\n\n")
	fmt.Fprintln(w, "| runtime | N | runs | answered | all answering (s) | rate (/s) | kB/container | × pirun mem | × pirun time | slab | kernel stack | page tables | helper PSS | helpers/container | teardown (s) | leftovers |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, c := range cells {
		if c.Runs == 0 {
			fmt.Fprintf(w, "| %s | %d | 0 | skipped: %s | | | | | | | | | | | | |\n", c.Runtime, c.N, mdEscape(c.Skipped))
			continue
		}
		answered := fmt.Sprintf("%s/%d", med(c.Answered, 0), c.N)
		if c.Started.Median < float64(c.N) {
			answered += fmt.Sprintf(" (started %s)", med(c.Started, 0))
		}
		if c.TimedOut > 0 {
			answered += fmt.Sprintf(", budget hit in %d/%d", c.TimedOut, c.Runs)
		}
		memR, timeR := "–", "–"
		if p, ok := pirun[c.N]; ok && c.Runtime != "pirun" {
			memR, timeR = ratio(c.Mem, p.Mem), ratio(c.AllAnswering, p.AllAnswering)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			c.Runtime, c.N, c.Runs, answered, rng(c.AllAnswering, 1), rng(c.Rate, 1), rng(c.Mem, 0), memR, timeR,
			med(c.Slab, 0), med(c.KernelStack, 0), med(c.PageTables, 0), med(c.HelperPSS, 0),
			med(c.HelpersPerCtr, 2), rng(c.Teardown, 1), leftoverText(c.Leftovers))
	}
	fmt.Fprintln(w)
	if chart != "" {
		fmt.Fprintf(w, "![memory per container and start time against N](%s)\n\n", chart)
	}
	var notes []string
	for _, c := range cells {
		if c.Skipped != "" && c.Runs > 0 {
			notes = append(notes, fmt.Sprintf("%s N=%d: some runs skipped: %s", c.Runtime, c.N, c.Skipped))
		}
		for _, e := range c.Notes {
			notes = append(notes, fmt.Sprintf("%s N=%d: %s", c.Runtime, c.N, e))
		}
		for _, e := range c.Errors {
			notes = append(notes, fmt.Sprintf("%s N=%d: %s", c.Runtime, c.N, e))
		}
	}
	for _, h := range res.HostChanges {
		notes = append(notes, "host: "+h)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "Notes:")
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", mdEscape(n))
		}
		fmt.Fprintln(w)
	}
	var keys []string
	for k := range res.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "Versions:")
	fmt.Fprintln(w)
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: %s\n", k, mdEscape(res.Versions[k]))
	}
	keys = keys[:0]
	for k := range res.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Settings:")
	fmt.Fprintln(w)
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: %s\n", k, mdEscape(res.Settings[k]))
	}
}

func leftoverText(l Leftovers) string {
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(l.Containers, "containers")
	add(l.Processes, "processes")
	add(l.BridgePorts, "veths")
	add(l.Mounts, "mounts")
	add(l.Helpers, "helpers")
	if l.Containers < 0 {
		parts = append(parts, "containers unknown")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}
