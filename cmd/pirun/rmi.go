package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/image"
)

func newRmiCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rmi [-f] IMAGE...",
		Short: "Remove images from the store",
		Long: `Remove the names of images from the store. An image that a container
(running or not) uses is refused, unless -f; its blobs and layers stay until
pirun image prune, which keeps those of existing containers.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.store()
			if err != nil {
				return err
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			for _, arg := range args {
				img, err := s.Lookup(ctx, arg)
				if err != nil {
					return err
				}
				if !force {
					cs, err := rt.List(ctx)
					if err != nil {
						return err
					}
					imgs, err := s.List(ctx)
					if err != nil {
						return err
					}
					// The digest is still held if another name records it.
					aliased := false
					for _, o := range imgs {
						aliased = aliased || (o.Name != img.Name && o.Digest == img.Digest)
					}
					var users []string
					for _, c := range cs {
						if c.Image == img.Name || (!aliased && c.ImageDigest == img.Digest.String()) {
							users = append(users, c.Name)
						}
					}
					if len(users) > 0 {
						return fmt.Errorf("image %q: %w by %s (use -f to remove its name anyway)",
							image.FamiliarName(img.Name), image.ErrInUse, strings.Join(users, ", "))
					}
				}
				if _, err := s.Remove(ctx, img.Name); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), image.FamiliarName(img.Name))
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove the image even if containers use it")
	return cmd
}
