package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

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
}

// Stats samples the running containers among ids. Containers that are not
// running are left out; an unknown id is an error naming it.
func (r *Runtime) Stats(ctx context.Context, ids []string) ([]Stats, error) {
	var (
		out  []Stats
		errs []error
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
		s := Stats{ID: id, Name: c.Name, Time: time.Now()}
		if cg := st.CgroupStats; cg != nil {
			s.MemoryUsage = cg.MemoryStats.Usage.Usage
			s.CPUTime = cg.CpuStats.CpuUsage.TotalUsage
			s.Pids = cg.PidsStats.Current
			if c.Resources.Memory > 0 {
				s.MemoryLimit = cg.MemoryStats.Usage.Limit
			}
			if c.Resources.PidsLimit > 0 {
				s.PidsLimit = cg.PidsStats.Limit
			}
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}
