package density

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Meminfo is /proc/meminfo in kB, by field name.
type Meminfo map[string]int64

// readMeminfo reads /proc/meminfo.
func readMeminfo() (Meminfo, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	m := Meminfo{}
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		m[strings.TrimSuffix(f[0], ":")] = v
	}
	return m, nil
}

// settledMeminfo frees what the harness itself holds, drops the page cache,
// dentries and inodes, lets the kernel settle, and reads /proc/meminfo.
//
// Settling means MemAvailable moving less than 2 MiB in half a second (for
// at most 30 s). The kernel frees the memory cgroups of removed containers
// late, once their last pages go (drop_caches frees those), and each can
// hold over 1 MB (a slot per shrinker: see the README): read too early
// after a teardown, MemAvailable rises during the next run and the reading
// of that run is worthless (pirun's N=100 read −3 and −193 kB/container so).
func settledMeminfo() (Meminfo, error) {
	runtime.GC()
	debug.FreeOSMemory()
	exec.Command("sync").Run()
	var prev int64 = -1 << 62
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
		m, err := readMeminfo()
		if err != nil {
			return nil, err
		}
		cur := m["MemAvailable"]
		if d := cur - prev; d < 2048 && d > -2048 || time.Now().After(deadline) {
			return m, nil
		}
		prev = cur
	}
}

// proc is one process of the host.
type proc struct {
	Pid, PPid int
	Comm      string
	HostPidNS bool // in the harness's pid namespace (not in a container)
	Kernel    bool
	cgroup    string
}

const pfKthread = 0x00200000

var selfPidNS, _ = os.Readlink("/proc/self/ns/pid")

// scanProcs lists the host's processes. Processes that vanish while being
// read are skipped.
func scanProcs() map[int]*proc {
	ents, _ := os.ReadDir("/proc")
	ps := make(map[int]*proc, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp session tty tpgid flags ...
		open, closing := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(string(stat[closing+1:]))
		if len(f) < 7 {
			continue
		}
		if f[0] == "Z" || f[0] == "X" {
			continue // a zombie holds no memory; pid 1 here may not reap
		}
		ppid, _ := strconv.Atoi(f[1])
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		p := &proc{Pid: pid, PPid: ppid, Comm: string(stat[open+1 : closing]), Kernel: flags&pfKthread != 0}
		if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns/pid")); err == nil {
			p.HostPidNS = ns == selfPidNS
		}
		if !p.HostPidNS && !p.Kernel {
			cg, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
			p.cgroup = string(cg)
		}
		ps[pid] = p
	}
	return ps
}

// pss returns a process's proportional set size in kB (0 if it is gone).
func pss(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// Helpers is what a runtime's helper processes cost at one moment.
type Helpers struct {
	Count  int            `json:"count"`
	PSSkB  int64          `json:"pss_kb"`
	ByComm map[string]int `json:"by_comm"`    // number of processes per name
	PSSBy  map[string]int `json:"pss_kb_by"`  // PSS per name
	CtrPSS int64          `json:"ctr_pss_kb"` // PSS of the containers' own processes
	Ctrs   int            `json:"ctr_procs"`  // number of the containers' own processes
}

// helperSnapshot finds the helper processes of a runtime: host processes
// (not kernel threads, not pid 1, not the harness) whose name is one of
// names, or which are the parent of one of the containers' processes
// (shims, conmon). ids are the containers' ids: a process is a container
// process when its cgroup names one of them.
func helperSnapshot(names []string, ids map[string]bool) Helpers {
	ps := scanProcs()
	self := os.Getpid()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	helper := map[int]bool{}
	h := Helpers{ByComm: map[string]int{}, PSSBy: map[string]int{}}
	for _, p := range ps {
		if p.HostPidNS || p.Kernel || !inContainers(p.cgroup, ids) {
			continue
		}
		h.Ctrs++
		h.CtrPSS += pss(p.Pid)
		if pp, ok := ps[p.PPid]; ok && pp.HostPidNS && pp.Pid != 1 {
			helper[pp.Pid] = true
		}
	}
	for _, p := range ps {
		if p.HostPidNS && !p.Kernel && p.Pid != 1 && p.Pid != self && want[p.Comm] {
			helper[p.Pid] = true
		}
	}
	for pid := range helper {
		p := ps[pid]
		k := pss(pid)
		h.Count++
		h.PSSkB += k
		h.ByComm[p.Comm]++
		h.PSSBy[p.Comm] += int(k)
	}
	return h
}

// inContainers reports whether a /proc/PID/cgroup text names one of ids.
func inContainers(cgroup string, ids map[string]bool) bool {
	if cgroup == "" || len(ids) == 0 {
		return false
	}
	for line := range strings.SplitSeq(cgroup, "\n") {
		for _, part := range strings.FieldsFunc(line, func(r rune) bool { return r == '/' || r == ':' || r == '-' || r == '.' }) {
			if ids[part] {
				return true
			}
		}
	}
	return false
}

// containerProcs counts the processes still running in containers whose
// ids are given.
func containerProcs(ids map[string]bool) int {
	n := 0
	for _, p := range scanProcs() {
		if !p.HostPidNS && !p.Kernel && inContainers(p.cgroup, ids) {
			n++
		}
	}
	return n
}

// bridgePorts counts the interfaces attached to a bridge (-1 if the bridge
// does not exist).
func bridgePorts(bridge string) int {
	ents, err := os.ReadDir(filepath.Join("/sys/class/net", bridge, "brif"))
	if err != nil {
		return -1
	}
	return len(ents)
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []string
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			ms = append(ms, mp)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	return ms
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readSysctl reads a /proc/sys value, trimmed.
func readSysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func writeSysctl(name, v string) error {
	return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(v), 0)
}

// iptablesChains lists the chains of the filter and nat tables as
// "table/chain".
func iptablesChains() map[string]bool {
	chains := map[string]bool{}
	for _, t := range []string{"filter", "nat"} {
		out, err := exec.Command("iptables-save", "-t", t).Output()
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(out), "\n") {
			if c, ok := strings.CutPrefix(line, ":"); ok {
				chains[t+"/"+strings.Fields(c)[0]] = true
			}
		}
	}
	return chains
}

// removeChains deletes the iptables chains of the filter and nat tables
// that are not in baseline and whose names start with one of prefixes,
// with the rules that jump to them. It returns the chains it removed.
func removeChains(baseline map[string]bool, prefixes ...string) ([]string, error) {
	var removed []string
	var errs []string
	for _, t := range []string{"filter", "nat"} {
		out, err := exec.Command("iptables-save", "-t", t).Output()
		if err != nil {
			continue
		}
		doomed := map[string]bool{}
		for line := range strings.SplitSeq(string(out), "\n") {
			if c, ok := strings.CutPrefix(line, ":"); ok {
				name := strings.Fields(c)[0]
				if baseline[t+"/"+name] {
					continue
				}
				for _, p := range prefixes {
					if strings.HasPrefix(name, p) {
						doomed[name] = true
					}
				}
			}
		}
		if len(doomed) == 0 {
			continue
		}
		// The jumps into them from chains that stay.
		for line := range strings.SplitSeq(string(out), "\n") {
			rule, ok := strings.CutPrefix(line, "-A ")
			if !ok {
				continue
			}
			args := splitQuoted(rule)
			if len(args) == 0 || doomed[args[0]] {
				continue
			}
			for i := 0; i+1 < len(args); i++ {
				if (args[i] == "-j" || args[i] == "-g") && doomed[args[i+1]] {
					if out, err := exec.Command("iptables", append([]string{"-t", t, "-D"}, args...)...).CombinedOutput(); err != nil {
						errs = append(errs, strings.TrimSpace(string(out)))
					}
					break
				}
			}
		}
		for c := range doomed {
			exec.Command("iptables", "-t", t, "-F", c).Run()
		}
		for c := range doomed {
			if out, err := exec.Command("iptables", "-t", t, "-X", c).CombinedOutput(); err != nil {
				errs = append(errs, strings.TrimSpace(string(out)))
				continue
			}
			removed = append(removed, t+"/"+c)
		}
	}
	sort.Strings(removed)
	if len(errs) > 0 {
		return removed, fmt.Errorf("iptables: %s", strings.Join(errs, "; "))
	}
	return removed, nil
}

// splitQuoted splits an iptables-save rule into arguments, honouring
// double quotes.
func splitQuoted(s string) []string {
	var args []string
	var cur strings.Builder
	in, have := false, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && in && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			in, have = !in, true
		case c == ' ' && !in:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}
