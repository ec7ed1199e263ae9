package main

import (
	"fmt"
	goruntime "runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pirun's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pirun %s\n", version)
			fmt.Fprintf(w, "platform: %s/%s\n", goruntime.GOOS, goruntime.GOARCH)
			fmt.Fprintf(w, "go: %s\n", goruntime.Version())
			fmt.Fprintf(w, "seccomp: %t\n", runtime.SeccompSupported)
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, d := range bi.Deps {
					switch d.Path {
					case "github.com/opencontainers/runc", "github.com/containers/image/v5",
						"github.com/vishvananda/netlink", "github.com/coreos/go-iptables":
						fmt.Fprintf(w, "%s: %s\n", d.Path, d.Version)
					}
				}
			}
			return nil
		},
	}
}
