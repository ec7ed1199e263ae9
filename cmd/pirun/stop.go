package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

func newStopCmd(g *globals) *cobra.Command {
	var sel selection
	var seconds int
	cmd := &cobra.Command{
		Use:   "stop [-t SECONDS] (ID...|--all|--group PREFIX)",
		Short: "Stop containers: SIGTERM, then SIGKILL after the timeout",
		RunE: func(cmd *cobra.Command, args []string) error {
			if seconds < 0 {
				return fmt.Errorf("-t %d: the timeout must not be negative", seconds)
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			ids, err := sel.targets(cmd.Context(), rt, args)
			if err != nil {
				return err
			}
			return rt.Stop(cmd.Context(), ids, time.Duration(seconds)*time.Second)
		},
	}
	sel.flags(cmd, "stop")
	cmd.Flags().IntVarP(&seconds, "time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
	return cmd
}

// selection is which containers a verb acts on: named ones, all, or the
// containers of one spawn group.
type selection struct {
	all   bool
	group string
}

func (s *selection) flags(cmd *cobra.Command, verb string) {
	cmd.Flags().BoolVar(&s.all, "all", false, verb+" every container")
	cmd.Flags().StringVar(&s.group, "group", "", verb+" the containers of one spawn group (its --name prefix)")
}

func (s *selection) targets(ctx context.Context, rt *runtime.Runtime, args []string) ([]string, error) {
	switch {
	case (s.all || s.group != "") && len(args) > 0, s.all && s.group != "":
		return nil, fmt.Errorf("give container ids, --all or --group, only one of them")
	case s.all || s.group != "":
		cs, err := rt.List(ctx)
		if err != nil {
			return nil, err
		}
		var ids []string
		for _, c := range cs {
			if s.all || c.Group == s.group {
				ids = append(ids, c.ID)
			}
		}
		return ids, nil
	case len(args) == 0:
		return nil, fmt.Errorf("give container ids or names, --all or --group")
	}
	return rt.Resolve(ctx, args)
}
