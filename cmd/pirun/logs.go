package main

import (
	"io"

	"github.com/spf13/cobra"
)

func newLogsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logs ID",
		Short: "Print the output (stdout and stderr) of a detached container",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			r, err := rt.Logs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(cmd.OutOrStdout(), r)
			return err
		},
	}
}
