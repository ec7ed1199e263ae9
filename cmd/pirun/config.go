package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// defaultConfigPath is where pirun looks for its optional config file.
const defaultConfigPath = "/etc/pirun/config.json"

// config holds the defaults a machine sets for every pirun command, e.g.
// an appliance whose / is read-only:
//
//	{"root": "/data/pirun", "state": "/run/pirun", "bridge": "pirun0", "subnet": "10.123.0.0/16"}
//
// Precedence: flags, then environment (PIRUN_ROOT, PIRUN_STATE), then the
// file, then the built-in defaults.
type config struct {
	Root   string `json:"root,omitempty"`
	State  string `json:"state,omitempty"`
	Bridge string `json:"bridge,omitempty"`
	Subnet string `json:"subnet,omitempty"`
}

// loadConfig reads the config file; a missing default file is no error,
// a missing file named explicitly is.
func loadConfig(path string, explicit bool) (config, error) {
	var c config
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// apply fills the globals from flags, environment, config and defaults.
func (g *globals) apply(cmd *cobra.Command) error {
	path, explicit := g.configPath, g.configPath != ""
	if !explicit {
		if path = os.Getenv("PIRUN_CONFIG"); path != "" {
			explicit = true
		} else {
			path = defaultConfigPath
		}
	}
	c, err := loadConfig(path, explicit)
	if err != nil {
		return err
	}
	pick := func(flag, env, file, def string) string {
		if f := cmd.Flags().Lookup(flag); f != nil && f.Changed {
			return f.Value.String()
		}
		if v := os.Getenv(env); env != "" && v != "" {
			return v
		}
		if file != "" {
			return file
		}
		return def
	}
	g.root = pick("root", "PIRUN_ROOT", c.Root, "/var/lib/pirun")
	g.state = pick("state", "PIRUN_STATE", c.State, "/run/pirun")
	g.bridge = pick("bridge", "", c.Bridge, network.DefaultBridgeName)
	subnet := pick("subnet", "", c.Subnet, network.DefaultSubnet.String())
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return fmt.Errorf("subnet %q: %w", subnet, err)
	}
	g.netOpts = []runtime.Option{runtime.WithNetworkOptions(network.WithBridgeName(g.bridge), network.WithSubnet(p))}
	return nil
}
