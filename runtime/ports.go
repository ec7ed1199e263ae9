package runtime

import (
	"context"

	"github.com/pirun/pirun/network"
)

// checkPorts refuses, before anything starts, host ports that are in use.
func (r *Runtime) checkPorts(ctx context.Context, g *group) error {
	if len(g.cfg.Ports) == 0 {
		return nil
	}
	return g.net.CheckPorts(ctx, g.cfg.Ports)
}

// publish publishes the group's ports to all its containers, which run.
func (r *Runtime) publish(ctx context.Context, g *group, cs []*started) error {
	if len(g.cfg.Ports) == 0 {
		return nil
	}
	eps := make([]network.Endpoint, len(cs))
	for i, c := range cs {
		eps[i] = *c.Endpoint
	}
	return g.net.Publish(ctx, g.cfg.Ports, eps)
}

// unpublish takes the containers out of the ports they publish.
func (r *Runtime) unpublish(ctx context.Context, cs []*Container) error {
	var ids []string
	for _, c := range cs {
		if len(c.Ports) > 0 {
			ids = append(ids, c.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	net, err := r.network()
	if err != nil {
		return err
	}
	return net.Unpublish(ctx, ids)
}

// reattachPorts redoes, for a container restarted on its endpoint, what
// publishing set on its old veth.
func (r *Runtime) reattachPorts(ctx context.Context, g *group, c *started) error {
	if len(c.Ports) == 0 || c.Endpoint == nil {
		return nil
	}
	return g.net.Reattach(ctx, *c.Endpoint)
}
