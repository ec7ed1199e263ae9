package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/image"
)

func newPullCmd(g *globals) *cobra.Command {
	var name string
	var out output
	cmd := &cobra.Command{
		Use:   "pull [--name NAME] SOURCE",
		Short: "Import an image into the store",
		Long: `Import an image into the store, unpacking each new layer once.

SOURCE is oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH[:REF].
The image is stored under --name, or else under the name the archive carries.`,
		Example: `  pirun pull oci-archive:build/rpi-busybox-httpd.tar
  pirun pull --name web:1 docker-archive:web.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			s, err := g.store()
			if err != nil {
				return err
			}
			var opts []image.ImportOption
			if name != "" {
				opts = append(opts, image.WithName(name))
			}
			img, err := s.Import(cmd.Context(), args[0], opts...)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch {
			case out.format == "json":
				return json.NewEncoder(w).Encode(img)
			case out.quiet:
				fmt.Fprintln(w, img.Digest)
			default:
				fmt.Fprintf(w, "%s %s\n", image.FamiliarName(img.Name), img.Digest)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name to store the image under")
	out.flags(cmd, "print only the digest")
	return cmd
}
