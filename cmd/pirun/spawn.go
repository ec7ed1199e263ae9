package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

func newSpawnCmd(g *globals) *cobra.Command {
	var n, parallel int
	var pull pullFlag
	var limits limitFlags
	var ports portFlags
	var nets netFlags
	var cfg runtime.Config
	var out output
	cmd := &cobra.Command{
		Use:   "spawn -n N [--name PREFIX] [--network bridge|macvlan|host|none] [--parent IFACE] IMAGE [CMD...]",
		Short: "Start N detached replicas of an image on one shared read-only rootfs",
		Long: `Start N detached replicas of an image, in parallel, each in its own
namespaces with its own IP on the pirun bridge, all on one shared read-only
rootfs. Either all N start or none stays. The containers are named
PREFIX-1, PREFIX-2, … (skipping names in use); their names are printed.`,
		Example: `  pirun spawn -n 1000 rpi-busybox-httpd
  pirun spawn -n 100 -p 127.0.0.1:8080:80 rpi-busybox-httpd   # one host port, spread over all 100`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			if n < 1 {
				return fmt.Errorf("-n %d: the count must be at least 1", n)
			}
			if parallel < 0 {
				return fmt.Errorf("--parallel %d: must not be negative", parallel)
			}
			rt, err := g.runtime(runtime.WithWorkers(parallel))
			if err != nil {
				return err
			}
			if err := limits.apply(&cfg); err != nil {
				return err
			}
			if err := ports.apply(&cfg); err != nil {
				return err
			}
			if err := nets.apply(cmd, &cfg); err != nil {
				return err
			}
			cfg.Image, cfg.Cmd = args[0], args[1:]
			if err := pull.ensure(cmd.Context(), g, cfg.Image, out.quiet || out.format != "table"); err != nil {
				return err
			}
			var progress func(done, total int)
			start := time.Now()
			if !out.quiet && out.format == "table" && isTerminal(os.Stderr) {
				progress = func(done, total int) {
					fmt.Fprintf(os.Stderr, "\rstarting %d/%d", done, total)
				}
			}
			var cs []*runtime.Container
			if cfg.Restart != "" && cfg.Restart != runtime.RestartNo {
				cs, err = spawnSupervised(cmd.Context(), g, superviseRequest{Config: cfg, N: n, Parallel: parallel}, progress)
			} else {
				cs, err = rt.Spawn(cmd.Context(), cfg, n, progress)
			}
			if progress != nil {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch {
			case out.format == "json" || out.tmpl != nil:
				return printContainers(w, cs, out)
			case out.quiet:
				for _, c := range cs {
					fmt.Fprintln(w, c.ID)
				}
			default:
				for _, c := range cs {
					fmt.Fprintln(w, c.Name)
				}
				if isTerminal(os.Stderr) {
					el := time.Since(start)
					fmt.Fprintf(os.Stderr, "started %d containers in %.2fs (%.0f/s)\n", n, el.Seconds(), float64(n)/el.Seconds())
				}
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().IntVarP(&n, "count", "n", 1, "number of containers to start")
	cmd.Flags().StringVar(&cfg.Name, "name", "", "name prefix (default: the image's name)")
	cmd.Flags().IntVar(&parallel, "parallel", 0, "containers started at once (default: 2 per CPU)")
	nets.flags(cmd)
	cmd.Flags().StringArrayVarP(&cfg.Env, "env", "e", nil, "set an environment variable (KEY=VALUE)")
	cmd.Flags().StringVar(&cfg.Restart, "restart", runtime.RestartNo, "restart policy: no, on-failure or always (starts one supervisor process for the group)")
	cmd.Flags().StringVar(&cfg.Cgroup, "cgroup", runtime.CgroupContainer, "where the limits apply: container (each) or group (one cgroup for all of this spawn)")
	pull.flags(cmd)
	limits.flags(cmd)
	ports.flags(cmd)
	out.flags(cmd, "print only container ids")
	return cmd
}
