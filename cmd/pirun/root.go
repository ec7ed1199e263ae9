package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/template"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// globals are the flags every verb shares.
type globals struct {
	configPath string
	root       string
	state      string
	bridge     string
	subnet     string
	debug      bool
	netOpts    []runtime.Option
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	cmd := &cobra.Command{
		Use:   "pirun",
		Short: "Run many small containers with little overhead: no daemon, no shim, one shared rootfs per image",
		Long: `pirun pulls OCI images, unpacks each layer once, shares one read-only rootfs
between all containers of an image through overlayfs, and starts containers
directly through runc's libcontainer: no daemon, no shim per container.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.PersistentFlags().StringVar(&g.configPath, "config", "", "config file of defaults (env PIRUN_CONFIG; default "+defaultConfigPath+" if it exists)")
	cmd.PersistentFlags().StringVar(&g.root, "root", "/var/lib/pirun", "image store directory (env PIRUN_ROOT)")
	cmd.PersistentFlags().StringVar(&g.state, "state", "/run/pirun", "runtime state directory, best on a tmpfs (env PIRUN_STATE)")
	cmd.PersistentFlags().StringVar(&g.bridge, "bridge", network.DefaultBridgeName, "bridge of the bridge network")
	cmd.PersistentFlags().StringVar(&g.subnet, "subnet", network.DefaultSubnet.String(), "subnet of the bridge network")
	cmd.PersistentFlags().BoolVar(&g.debug, "debug", false, "log what pirun does to stderr")
	cmd.PersistentPreRunE = func(cmd *cobra.Command, args []string) error { return g.apply(cmd) }
	cmd.AddCommand(
		newPullCmd(g), newImagesCmd(g), newRmiCmd(g), newImageCmd(g), newSpawnCmd(g), newRunCmd(g), newPsCmd(g),
		newStopCmd(g), newRmCmd(g), newLogsCmd(g), newStatsCmd(g), newVersionCmd(), newSuperviseCmd(g),
		newNetworkCmd(g),
	)
	return cmd
}

func (g *globals) logger() *slog.Logger {
	if !g.debug {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (g *globals) store() (*image.Store, error) {
	if g.root == "" {
		return nil, fmt.Errorf("--root: empty path")
	}
	return image.Open(g.root, image.WithLogger(g.logger()))
}

func (g *globals) runtime(opts ...runtime.Option) (*runtime.Runtime, error) {
	if g.state == "" {
		return nil, fmt.Errorf("--state: empty path")
	}
	s, err := g.store()
	if err != nil {
		return nil, err
	}
	opts = append(append([]runtime.Option{runtime.WithLogger(g.logger())}, g.netOpts...), opts...)
	return runtime.New(g.state, s, opts...)
}

// output is how a verb prints: a table for people, JSON or bare ids for scripts.
type output struct {
	format string
	quiet  bool
	tmpl   *template.Template
}

func (o *output) flags(cmd *cobra.Command, quietHelp string) {
	cmd.Flags().StringVar(&o.format, "format", "table", "output format: table, json, or a Go template applied to each item (e.g. '{{.IP}}')")
	cmd.Flags().BoolVarP(&o.quiet, "quiet", "q", false, quietHelp)
}

func (o *output) check() error {
	if o.format == "table" || o.format == "json" {
		return nil
	}
	t, err := template.New("format").Parse(o.format + "\n")
	if err != nil {
		return fmt.Errorf("--format %q: use table, json or a Go template: %w", o.format, err)
	}
	o.tmpl = t
	return nil
}

// isTerminal reports whether w is a terminal (progress is shown only there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printScripted prints items for scripts: a JSON array, one key per line
// (-q), or a Go template per item. It reports false when the format is
// the table, which the caller prints.
func printScripted[T any](w io.Writer, items []T, out output, key func(T) string) (bool, error) {
	switch {
	case out.format == "json":
		if items == nil {
			items = []T{}
		}
		return true, json.NewEncoder(w).Encode(items)
	case out.quiet:
		for _, it := range items {
			fmt.Fprintln(w, key(it))
		}
		return true, nil
	case out.tmpl != nil:
		for _, it := range items {
			if err := out.tmpl.Execute(w, it); err != nil {
				return true, fmt.Errorf("--format: %w", err)
			}
		}
		return true, nil
	}
	return false, nil
}
