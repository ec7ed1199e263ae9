package main

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/runtime"
)

func newPsCmd(g *globals) *cobra.Command {
	var all bool
	var out output
	cmd := &cobra.Command{
		Use:   "ps [-a] [-q] [--format table|json]",
		Short: "List containers (running ones unless -a)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			cs, err := rt.List(cmd.Context())
			if err != nil {
				return err
			}
			shown := cs[:0]
			for _, c := range cs {
				if all || c.Status == runtime.StatusRunning {
					shown = append(shown, c)
				}
			}
			return printContainers(cmd.OutOrStdout(), shown, out)
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "show all containers, not only running ones")
	out.flags(cmd, "print only container ids")
	return cmd
}

func printContainers(w io.Writer, cs []*runtime.Container, out output) error {
	if done, err := printScripted(w, cs, out, (*runtime.Container).ShortID); done {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER ID\tNAME\tIMAGE\tSTATUS\tPID\tIP\tPORTS\tCREATED")
	for _, c := range cs {
		pid, ip, status := "-", c.IP, string(c.Status)
		if c.Pid > 0 {
			pid = strconv.Itoa(c.Pid)
		}
		if ip == "" {
			ip = "-"
		}
		if c.ExitCode != nil && c.Status == runtime.StatusExited {
			status = fmt.Sprintf("exited (%d)", *c.ExitCode)
		}
		if c.Restarts > 0 {
			status += fmt.Sprintf(", %d restarts", c.Restarts)
			if c.ExitCode != nil && c.Status != runtime.StatusExited {
				status += fmt.Sprintf(" (last exit %d)", *c.ExitCode)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ShortID(), c.Name, image.FamiliarName(c.Image), status, pid, ip, formatPorts(c.Ports), ago(c.Created))
	}
	return tw.Flush()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}
