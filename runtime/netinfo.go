package runtime

import (
	"context"
	"errors"
	"io/fs"
	"os"

	"github.com/pirun/pirun/network"
)

// NetworkInfo describes what the runtime's bridge network holds on the
// host: bridges, containers per bridge, rules and sysctls, and how many
// addresses belong to containers that no longer exist.
func (r *Runtime) NetworkInfo(ctx context.Context) (*network.Info, error) {
	net, err := r.network()
	if err != nil {
		return nil, err
	}
	return net.Inspect(ctx, r.exists)
}

// PruneNetwork removes the bridge network's allocations, veths, bridges,
// rules and sysctls that no existing container uses (see network.Prune).
func (r *Runtime) PruneNetwork(ctx context.Context) (*network.PruneReport, error) {
	net, err := r.network()
	if err != nil {
		return nil, err
	}
	return net.Prune(ctx, r.exists)
}

// exists reports whether a container's record exists. The record is made
// before its address and removed after the address is released; anything
// but a clear "not there" counts as there.
func (r *Runtime) exists(id string) bool {
	_, err := os.Stat(r.st.containerDir(id))
	return !errors.Is(err, fs.ErrNotExist)
}
