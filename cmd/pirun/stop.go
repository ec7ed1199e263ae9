package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

func newStopCmd(g *globals) *cobra.Command {
	var all bool
	var seconds int
	cmd := &cobra.Command{
		Use:   "stop [-t SECONDS] (ID...|--all)",
		Short: "Stop containers: SIGTERM, then SIGKILL after the timeout",
		RunE: func(cmd *cobra.Command, args []string) error {
			if seconds < 0 {
				return fmt.Errorf("-t %d: the timeout must not be negative", seconds)
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			ids, err := targets(cmd.Context(), rt, args, all)
			if err != nil {
				return err
			}
			return rt.Stop(cmd.Context(), ids, time.Duration(seconds)*time.Second)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "stop every container")
	cmd.Flags().IntVarP(&seconds, "time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
	return cmd
}

// targets resolves the containers a verb acts on: the named ones, or all.
func targets(ctx context.Context, rt *runtime.Runtime, args []string, all bool) ([]string, error) {
	switch {
	case all && len(args) > 0:
		return nil, fmt.Errorf("give container ids or --all, not both")
	case all:
		cs, err := rt.List(ctx)
		if err != nil {
			return nil, err
		}
		ids := make([]string, len(cs))
		for i, c := range cs {
			ids[i] = c.ID
		}
		return ids, nil
	case len(args) == 0:
		return nil, fmt.Errorf("give container ids or names, or --all")
	}
	return rt.Resolve(ctx, args)
}
