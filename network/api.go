package network

// This file is the contract that runtime/ and cmd/pirun build on.
// Keep the exported names and their meaning; implement them elsewhere.

import (
	"context"
	"errors"
	"net/netip"
)

// Sentinel errors, wrapped with the object's name: callers use errors.Is.
var (
	ErrSubnetFull    = errors.New("subnet is full")
	ErrSubnetOverlap = errors.New("subnet overlaps a route of the host")
	ErrInvalidConfig = errors.New("invalid network configuration")
)

// Endpoint is one container's place on a network. It is serialized in the
// container's state, so rm can release it after a crash.
type Endpoint struct {
	Network     string       `json:"network"`      // the bridge of its slice of the subnet, e.g. "pirun0" or "pirun0-1"; macvlan: the parent
	ContainerID string       `json:"container_id"` // owner of the allocation
	Address     netip.Prefix `json:"address"`      // e.g. 10.123.4.5/22
	Gateway     netip.Addr   `json:"gateway"`      // e.g. 10.123.4.1
	HostIf      string       `json:"host_if"`      // host-side veth name, "pr" + 10 hex of the id; macvlan: the host's own macvlan, "pirun-mv" + the parent's ifindex
	// Driver is the driver that made the endpoint: DriverMacvlan, or
	// empty for the bridge driver. Parent is a macvlan endpoint's parent
	// interface. Both are recorded so that rm after a crash goes to the
	// right driver.
	Driver string `json:"driver,omitempty"`
	Parent string `json:"parent,omitempty"`
}

// Driver is what every network driver (Bridge, Macvlan) gives the
// runtime: Check before anything starts, Allocate an address per
// container, Attach a container's network namespace, Release on rm
// (idempotent, and able to finish after a crash: see each driver).
type Driver interface {
	Check(ctx context.Context, n int) error
	Allocate(ctx context.Context, ids []string) ([]Endpoint, error)
	Attach(ctx context.Context, ep Endpoint, nsPath string) error
	Release(ctx context.Context, eps []Endpoint) error
}
