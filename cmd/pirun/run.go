package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

func newRunCmd(g *globals) *cobra.Command {
	var detach, rm bool
	var pull pullFlag
	var limits limitFlags
	var ports portFlags
	var nets netFlags
	var cfg runtime.Config
	cmd := &cobra.Command{
		Use:   "run [-d] [--rm] [--name NAME] [--network bridge|macvlan|host|none] [--parent IFACE] IMAGE [CMD...]",
		Short: "Run one container, in the foreground or detached",
		Long: `Run one container. In the foreground (default) its output streams to this
terminal and pirun exits with the container's exit code. With -d it runs
detached: its id is printed and its output goes to 'pirun logs'.`,
		Example: `  pirun run --rm rpi-busybox-httpd cat /www/index.html
  pirun run -d --name web rpi-busybox-httpd`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if detach && rm {
				return fmt.Errorf("--rm with -d: a detached container has no pirun process left to remove it when it exits; use 'pirun rm'")
			}
			rt, err := g.runtime()
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
			ctx := cmd.Context()
			if err := pull.ensure(ctx, g, cfg.Image, detach); err != nil {
				return err
			}
			if detach {
				c, err := rt.Start(ctx, cfg)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), c.ID)
				return nil
			}
			c, code, err := rt.Run(ctx, cfg, runtime.Stdio{Stdin: nil, Stdout: os.Stdout, Stderr: os.Stderr})
			if rm && c != nil {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				if rerr := rt.Remove(cctx, []string{c.ID}, true); rerr != nil && err == nil {
					err = rerr
				}
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return exitCodeError{code}
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background and print the container id")
	cmd.Flags().BoolVar(&rm, "rm", false, "remove the container when it exits")
	cmd.Flags().StringVar(&cfg.Name, "name", "", "container name (default: derived from the image)")
	nets.flags(cmd)
	cmd.Flags().StringArrayVarP(&cfg.Env, "env", "e", nil, "set an environment variable (KEY=VALUE)")
	pull.flags(cmd)
	limits.flags(cmd)
	ports.flags(cmd)
	return cmd
}
