package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/network"
)

func newNetworkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Show and prune the bridge network: bridges, addresses, rules and sysctls",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newNetworkLsCmd(g), newNetworkPruneCmd(g))
	return cmd
}

func newNetworkLsCmd(g *globals) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "ls [--format table|json] [-q]",
		Short: "Show the network's bridges, containers per bridge, and the rules and sysctls pirun holds",
		Long: `Show what the bridge network (--bridge, --subnet) holds on the host: one
bridge per /22 slice of the subnet in use, with its containers (UNUSED:
addresses whose container no longer exists, which 'network prune' frees) and
the links attached to it; pirun's iptables rules for those bridges; the
sysctls pirun raised, with their original values.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			info, err := rt.NetworkInfo(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch {
			case out.format == "json":
				return json.NewEncoder(w).Encode([]*network.Info{info})
			case out.quiet:
				for _, b := range info.Bridges {
					fmt.Fprintln(w, b.Name)
				}
				return nil
			case out.tmpl != nil:
				return out.tmpl.Execute(w, info)
			}
			return printNetwork(w, info)
		},
	}
	out.flags(cmd, "print only the bridges' names")
	return cmd
}

func printNetwork(w io.Writer, info *network.Info) error {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NETWORK\tSUBNET\tCONTAINERS\tUNUSED\tCAPACITY\tBRIDGES")
	fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", info.Name, info.Subnet, info.InUse, info.Unused, info.Capacity, len(info.Bridges))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(info.Bridges) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "BRIDGE\tSUBNET\tGATEWAY\tCONTAINERS\tUNUSED\tON HOST\tPORTS")
		for _, b := range info.Bridges {
			on := "no"
			if b.Exists {
				on = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\n", b.Name, b.Subnet, b.Gateway, b.Containers, b.Unused, on, b.Ports)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(info.Rules) > 0 {
		fmt.Fprintln(w, "\nIPTABLES RULES")
		for _, r := range info.Rules {
			fmt.Fprintln(w, r)
		}
	}
	if len(info.Sysctls) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "SYSCTL\tORIGINAL\tSET\tNOW")
		for _, s := range info.Sysctls {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", strings.ReplaceAll(s.Key, "/", "."), s.Original, s.Set, s.Current)
		}
		return tw.Flush()
	}
	return nil
}

func newNetworkPruneCmd(g *globals) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "prune [--format table|json] [-q]",
		Short: "Remove the addresses, veths, bridges, rules and sysctls that no container uses",
		Long: `Remove what the bridge network holds for containers that no longer exist:
their addresses and veths; then bridges left without a container, the
iptables rules of bridges that are gone and, when no container is left, the
sysctls pirun raised. Nothing a container uses is removed, and a bridge that
still has links attached is kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			rep, err := rt.PruneNetwork(cmd.Context())
			w := cmd.OutOrStdout()
			if rep != nil {
				switch {
				case out.format == "json":
					if jerr := json.NewEncoder(w).Encode(rep); jerr != nil && err == nil {
						err = jerr
					}
				case out.quiet:
				default:
					fmt.Fprintf(w, "freed %d addresses, deleted %d links, %d rules, restored %d sysctls\n",
						len(rep.Addresses), len(rep.Links), len(rep.Rules), len(rep.Sysctls))
					for _, l := range rep.Links {
						fmt.Fprintln(w, "deleted link", l)
					}
					for _, r := range rep.Rules {
						fmt.Fprintln(w, "deleted rule", r)
					}
					for _, k := range rep.Kept {
						fmt.Fprintln(w, "kept", k)
					}
				}
			}
			return err
		},
	}
	out.flags(cmd, "print nothing")
	return cmd
}
