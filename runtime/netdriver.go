package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/pirun/pirun/network"
)

// Network modes of Config.Network, and what a container gets:
//
//	bridge   its own network namespace, a veth on a pirun bridge (default)
//	macvlan  its own network namespace, a macvlan on Config.Macvlan.Parent:
//	         a host of the parent's LAN, reached from the host too
//	host     no network namespace: the host's interfaces, addresses and
//	         ports (no -p: a port the container binds is the host's)
//	none     its own network namespace with only lo
//
// The launcher unshares a network namespace for all but host; rm releases
// an endpoint with the driver its record names.

// netDrivers holds the macvlan drivers this Runtime opened, one per
// configuration (most programs use one).
type netDrivers struct {
	mu       sync.Mutex
	macvlans map[network.MacvlanConfig]*network.Macvlan
}

// driver returns the network driver of cfg's containers: nil for the host
// network and none.
func (r *Runtime) driver(cfg *Config) (network.Driver, error) {
	switch cfg.Network {
	case NetworkBridge:
		return r.network()
	case NetworkMacvlan:
		return r.macvlan(cfg.Macvlan)
	}
	return nil, nil
}

func (r *Runtime) macvlan(cfg network.MacvlanConfig) (*network.Macvlan, error) {
	r.drivers.mu.Lock()
	defer r.drivers.mu.Unlock()
	if m, ok := r.drivers.macvlans[cfg]; ok {
		return m, nil
	}
	m, err := network.NewMacvlan(r.st.networkDir(), cfg, r.netOpts...)
	if err != nil {
		return nil, err
	}
	if r.drivers.macvlans == nil {
		r.drivers.macvlans = map[network.MacvlanConfig]*network.Macvlan{}
	}
	r.drivers.macvlans[cfg] = m
	return m, nil
}

// validateNetwork checks Config.Network and Config.Macvlan.
func (c *Config) validateNetwork() error {
	switch c.Network {
	case "":
		c.Network = NetworkBridge
	case NetworkBridge, NetworkNone, NetworkHost, NetworkMacvlan:
	default:
		return fmt.Errorf("network %q: %w: use %q, %q, %q or %q", c.Network, ErrInvalidConfig, NetworkBridge, NetworkMacvlan, NetworkHost, NetworkNone)
	}
	switch {
	case c.Network == NetworkMacvlan && c.Macvlan.Parent == "":
		return fmt.Errorf("network %q: %w: no parent interface", c.Network, ErrInvalidConfig)
	case c.Network != NetworkMacvlan && c.Macvlan != (network.MacvlanConfig{}):
		return fmt.Errorf("network %q: %w: a parent, subnet or gateway is for the macvlan network", c.Network, ErrInvalidConfig)
	case c.Network == NetworkHost && len(c.Ports) > 0:
		return fmt.Errorf("publish ports with network %q: %w: the container's ports are the host's already", c.Network, ErrInvalidConfig)
	}
	return nil
}

// pendingEndpoint is what a container's record says of its network before
// its address is allocated: for macvlan the driver and parent, so that rm
// after a crash releases it on the right network (the bridge's is found
// by container id alone).
func pendingEndpoint(cfg *Config, id string) *network.Endpoint {
	if cfg.Network != NetworkMacvlan {
		return nil
	}
	return &network.Endpoint{Driver: network.DriverMacvlan, Parent: cfg.Macvlan.Parent, ContainerID: id}
}

// wire is how the launcher sets up a container's network namespace; nil
// for the host network, where it makes none.
func (r *Runtime) wire(ctx context.Context, g *group, c *started) func(nsPath string) error {
	switch {
	case g.cfg.Network == NetworkHost:
		return nil
	case c.Endpoint != nil && c.Endpoint.Address.IsValid():
		return func(nsPath string) error { return g.drv.Attach(ctx, *c.Endpoint, nsPath) }
	}
	return network.SetupLoopback
}

// releaseEndpoints releases endpoints with the driver each names: one call
// (one lock hold) per network. It goes on past a failure.
func (r *Runtime) releaseEndpoints(ctx context.Context, eps []network.Endpoint) error {
	var bridge []network.Endpoint
	macvlan := map[string][]network.Endpoint{}
	var errs []error
	for _, ep := range eps {
		switch ep.Driver {
		case "":
			bridge = append(bridge, ep)
		case network.DriverMacvlan:
			macvlan[ep.Parent] = append(macvlan[ep.Parent], ep)
		default:
			errs = append(errs, fmt.Errorf("container %s: endpoint of unknown network driver %q: %w", shortID(ep.ContainerID), ep.Driver, ErrInvalidConfig))
		}
	}
	if len(bridge) > 0 {
		net, err := r.network()
		if err == nil {
			err = net.Release(ctx, bridge)
		}
		errs = append(errs, err)
	}
	for _, parent := range slices.Sorted(maps.Keys(macvlan)) {
		m, err := r.macvlan(network.MacvlanConfig{Parent: parent})
		if err == nil {
			err = m.Release(ctx, macvlan[parent])
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
