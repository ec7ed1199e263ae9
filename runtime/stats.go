package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
)

// Stats is one sample of a container's resource use, read from its cgroup.
type Stats struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Time        time.Time `json:"time"`
	MemoryUsage uint64    `json:"memory_usage"`           // bytes
	MemoryLimit uint64    `json:"memory_limit,omitempty"` // bytes; 0: none set
	CPUTime     uint64    `json:"cpu_time_ns"`            // total CPU time, nanoseconds
	Pids        uint64    `json:"pids"`
	PidsLimit   uint64    `json:"pids_limit,omitempty"` // 0: none set
	// Group is the spawn group (Container.Group); for GroupStats, the
	// group whose members are summed up, and Containers their number.
	Group      string `json:"group,omitempty"`
	Containers int    `json:"containers,omitempty"`
	// GroupLimits says the limits are the group's, shared by all its
	// members (Config.Cgroup = CgroupGroup), not the container's own.
	GroupLimits bool `json:"group_limits,omitempty"`
}

// Stats samples the running containers among ids. Containers that are not
// running are left out; an unknown id is an error naming it.
func (r *Runtime) Stats(ctx context.Context, ids []string) ([]Stats, error) {
	var (
		out        []Stats
		errs       []error
		groupStats = map[string]*cgroups.Stats{}
	)
	for _, id := range ids {
		c, err := r.st.read(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.refresh(c); c.Status != StatusRunning {
			continue
		}
		ct, err := libcontainer.Load(r.st.runcRoot(), id)
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s: stats: %w", c.displayName(), err))
			continue
		}
		st, err := ct.Stats()
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s: stats: %w", c.displayName(), err))
			continue
		}
		s := Stats{ID: id, Name: c.Name, Time: time.Now(), Group: c.Group}
		if cg := st.CgroupStats; cg != nil {
			s.MemoryUsage = cg.MemoryStats.Usage.Usage
			s.CPUTime = cg.CpuStats.CpuUsage.TotalUsage
			s.Pids = cg.PidsStats.Current
			lim := cg
			if c.CgroupGroup != "" {
				// The limits sit on the group's cgroup.
				s.GroupLimits = true
				if lim = groupStats[c.CgroupGroup]; lim == nil {
					if lim, err = readCgroupStats(c.CgroupGroup); err != nil {
						errs = append(errs, fmt.Errorf("container %s: stats of group cgroup %s: %w", c.displayName(), c.CgroupGroup, err))
						continue
					}
					groupStats[c.CgroupGroup] = lim
				}
			}
			if c.Resources.Memory > 0 {
				s.MemoryLimit = lim.MemoryStats.Usage.Limit
			}
			if c.Resources.PidsLimit > 0 {
				s.PidsLimit = lim.PidsStats.Limit
			}
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

func readCgroupStats(path string) (*cgroups.Stats, error) {
	m, err := manager.New(&cgroups.Cgroup{Path: path, Resources: &cgroups.Resources{}})
	if err != nil {
		return nil, err
	}
	return m.GetStats()
}

// GroupStats sums Stats over the spawn groups of the running containers
// among ids: one Stats per group, with Group set, ID and Name empty, and
// Containers the number summed. Limits are the group's when its members
// share one (GroupLimits), else the sum of theirs. Containers started
// alone (no group) are left out.
func (r *Runtime) GroupStats(ctx context.Context, ids []string) ([]Stats, error) {
	per, err := r.Stats(ctx, ids)
	byGroup := map[string]*Stats{}
	var out []*Stats
	for _, s := range per {
		if s.Group == "" {
			continue
		}
		g := byGroup[s.Group]
		if g == nil {
			g = &Stats{Group: s.Group, Time: s.Time, GroupLimits: s.GroupLimits}
			byGroup[s.Group] = g
			out = append(out, g)
		}
		g.Containers++
		g.MemoryUsage += s.MemoryUsage
		g.CPUTime += s.CPUTime
		g.Pids += s.Pids
		if s.GroupLimits {
			g.MemoryLimit, g.PidsLimit = s.MemoryLimit, s.PidsLimit
		} else {
			g.MemoryLimit += s.MemoryLimit
			g.PidsLimit += s.PidsLimit
		}
		if s.Time.After(g.Time) {
			g.Time = s.Time
		}
	}
	res := make([]Stats, len(out))
	for i, g := range out {
		res[i] = *g
	}
	return res, err
}
