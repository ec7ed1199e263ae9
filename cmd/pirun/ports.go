package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// portFlags is -p of run and spawn.
type portFlags struct{ specs []string }

func (p *portFlags) flags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&p.specs, "publish", "p", nil,
		"publish a port, [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp] (e.g. 127.0.0.1:8080:80); with spawn, one host port shared by all replicas")
}

func (p *portFlags) apply(cfg *runtime.Config) error {
	for _, s := range p.specs {
		m, err := network.ParsePortSpec(s)
		if err != nil {
			return err
		}
		cfg.Ports = append(cfg.Ports, m)
	}
	return nil
}

// formatPorts is the PORTS column of ps: 127.0.0.1:8080->80/tcp, ….
func formatPorts(ps []network.PortMapping) string {
	if len(ps) == 0 {
		return "-"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		host, _, _ := strings.Cut(p.HostAddr(), "/")
		s[i] = fmt.Sprintf("%s->%d/%s", host, p.ContainerPort, p.Protocol)
	}
	return strings.Join(s, ",")
}
