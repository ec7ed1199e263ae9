package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

// netFlags are --network, --parent and --gateway of run and spawn. The
// macvlan network's subnet is the global --subnet when it is given on the
// command line (otherwise the bridge's, from the config file or default).
type netFlags struct{ network, parent, gateway string }

func (f *netFlags) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.network, "network", runtime.NetworkBridge, "network: bridge, macvlan (on --parent's LAN), host or none")
	cmd.Flags().StringVar(&f.parent, "parent", "", "macvlan: the host interface whose LAN the containers join")
	cmd.Flags().StringVar(&f.gateway, "gateway", "", "macvlan: the LAN's gateway (default: the parent's default gateway, else the subnet's first address)")
}

func (f *netFlags) apply(cmd *cobra.Command, cfg *runtime.Config) error {
	cfg.Network = f.network
	if f.network != runtime.NetworkMacvlan {
		if f.parent != "" || f.gateway != "" {
			return fmt.Errorf("--parent and --gateway are for --network macvlan, not %s", f.network)
		}
		return nil
	}
	if f.parent == "" {
		return fmt.Errorf("--network macvlan: --parent IFACE is required")
	}
	cfg.Macvlan.Parent = f.parent
	if s := cmd.Flags().Lookup("subnet"); s != nil && s.Changed {
		p, err := netip.ParsePrefix(s.Value.String())
		if err != nil {
			return fmt.Errorf("--subnet %q: %w", s.Value.String(), err)
		}
		cfg.Macvlan.Subnet = p
	}
	if f.gateway != "" {
		a, err := netip.ParseAddr(f.gateway)
		if err != nil {
			return fmt.Errorf("--gateway %q: %w", f.gateway, err)
		}
		cfg.Macvlan.Gateway = a
	}
	return nil
}
