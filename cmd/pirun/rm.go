package main

import (
	"github.com/spf13/cobra"
)

func newRmCmd(g *globals) *cobra.Command {
	var sel selection
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] (ID...|--all|--group PREFIX)",
		Short: "Remove containers (running ones only with -f, which kills them)",
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			ids, rerr := sel.targets(cmd.Context(), rt, args)
			if len(ids) == 0 {
				return rerr
			}
			// Remove what can be found, then report what could not.
			err = rt.Remove(cmd.Context(), ids, force)
			if err != nil {
				return err
			}
			return rerr
		},
	}
	sel.flags(cmd, "remove")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill running containers and remove them")
	return cmd
}
