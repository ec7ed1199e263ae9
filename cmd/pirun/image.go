package main

import (
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/pirun/pirun/image"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage the image store",
		Args:  cobra.NoArgs,
	}
	var out output
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove blobs and unpacked layers that no image or container uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			s, err := g.store()
			if err != nil {
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
			var keep []digest.Digest
			for _, c := range cs {
				if d, err := digest.Parse(c.ImageDigest); err == nil {
					keep = append(keep, d)
				}
			}
			rep, err := s.Prune(cmd.Context(), image.WithKeep(keep...))
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch {
			case out.format == "json":
				return json.NewEncoder(w).Encode(rep)
			case out.quiet:
			default:
				fmt.Fprintf(w, "removed %d blobs and %d layers (%s)\n", rep.Blobs, rep.Layers, humanSize(rep.Bytes))
			}
			return nil
		},
	}
	out.flags(prune, "print nothing")
	cmd.AddCommand(prune)
	return cmd
}
