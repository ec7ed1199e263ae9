package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

func newStatsCmd(g *globals) *cobra.Command {
	var noStream, byGroup bool
	var out output
	cmd := &cobra.Command{
		Use:   "stats [--no-stream] [--group] [--format table|json] [ID...]",
		Short: "Show memory, CPU and pids of running containers, from their cgroups",
		Long: `Show each running container's memory use (and limit), CPU use and number
of processes, read from its cgroup. Without IDs: every running container.
The CPU column is the share of one CPU used over the last interval (one
second; half a second with --no-stream, which prints one sample and exits).
With --group: one line per spawn group, its members summed up. A limit
marked (group) is shared by the whole group (spawn --cgroup group).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ids, err := (&selection{all: len(args) == 0}).targets(ctx, rt, args)
			if err != nil {
				return err
			}
			interval := time.Second
			if noStream {
				interval = 500 * time.Millisecond
			}
			sample := rt.Stats
			if byGroup {
				sample = rt.GroupStats
			}
			prev, err := sample(ctx, ids)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				cur, err := sample(ctx, ids)
				if err != nil {
					return err
				}
				if !noStream && out.format == "table" && isTerminal(os.Stdout) {
					fmt.Fprint(w, "\033[H\033[2J") // clear the screen
				}
				if err := printStats(w, prev, cur, out); err != nil {
					return err
				}
				if noStream {
					return nil
				}
				prev = cur
			}
		},
	}
	cmd.Flags().BoolVar(&noStream, "no-stream", false, "print one sample and exit")
	cmd.Flags().BoolVar(&byGroup, "group", false, "one line per spawn group, its containers summed up")
	out.flags(cmd, "print only container ids")
	return cmd
}

// printStats prints cur, with CPU shares computed against prev.
func printStats(w io.Writer, prev, cur []runtime.Stats, out output) error {
	key := func(s runtime.Stats) string {
		if s.ID == "" {
			return "group " + s.Group
		}
		return s.ID
	}
	before := map[string]runtime.Stats{}
	for _, s := range prev {
		before[key(s)] = s
	}
	type row struct {
		runtime.Stats
		CPUPercent float64 `json:"cpu_percent"`
	}
	rows := make([]row, 0, len(cur))
	for _, s := range cur {
		r := row{Stats: s}
		if p, ok := before[key(s)]; ok && s.Time.After(p.Time) && s.CPUTime >= p.CPUTime {
			r.CPUPercent = 100 * float64(s.CPUTime-p.CPUTime) / float64(s.Time.Sub(p.Time).Nanoseconds())
		}
		rows = append(rows, r)
	}
	if done, err := printScripted(w, rows, out, func(r row) string {
		if r.ID == "" {
			return r.Group
		}
		return r.ID[:12]
	}); done {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	groups := len(rows) > 0 && rows[0].ID == ""
	if groups {
		fmt.Fprintln(tw, "GROUP\tCONTAINERS\tCPU %\tMEM USAGE / LIMIT\tPIDS")
	} else {
		fmt.Fprintln(tw, "CONTAINER ID\tNAME\tCPU %\tMEM USAGE / LIMIT\tPIDS")
	}
	for _, r := range rows {
		limit, pids := "-", strconv.FormatUint(r.Pids, 10)
		if r.MemoryLimit > 0 {
			limit = humanSize(int64(r.MemoryLimit))
		}
		if r.PidsLimit > 0 {
			pids += " / " + strconv.FormatUint(r.PidsLimit, 10)
		}
		if r.GroupLimits && !groups && (r.MemoryLimit > 0 || r.PidsLimit > 0) {
			limit += " (group)"
		}
		first, second := "", r.Name
		if groups {
			first, second = r.Group, strconv.Itoa(r.Containers)
		} else {
			first = r.ID[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t%s / %s\t%s\n", first, second, r.CPUPercent, humanSize(int64(r.MemoryUsage)), limit, pids)
	}
	return tw.Flush()
}
