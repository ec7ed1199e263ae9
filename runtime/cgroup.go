package runtime

import (
	"errors"
	"fmt"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
)

// Cgroup modes of Config.Cgroup.
const (
	// CgroupContainer gives every container a cgroup of its own, which
	// carries Config.Resources: the limits apply to each container.
	CgroupContainer = "container"
	// CgroupGroup makes one cgroup for all the containers of one Spawn,
	// /pirun/g-<12 hex>, which carries Config.Resources: the limits apply
	// to the group as a whole (a memory limit of 512m for 100 replicas is
	// 512m in all). Each container still gets a child cgroup of the group's
	// (libcontainer refuses to start a container in a cgroup that already
	// holds processes), which reports its own use in stats.
	CgroupGroup = "group"
)

// groupCgroupPath is the cgroup of a spawn group whose id is gid.
func groupCgroupPath(gid string) string { return "/" + cgroupParent + "/g-" + shortID(gid) }

// cgroupResources turns r into libcontainer's cgroup resources for a group
// cgroup. Device rules stay with each container's own cgroup: in cgroup v1
// a child cannot allow more devices than its parent, so the group's
// devices cgroup is left as it inherits it.
func (r Resources) cgroupResources() *cgroups.Resources {
	cr := &cgroups.Resources{SkipDevices: true, Memory: r.Memory}
	if r.PidsLimit > 0 {
		cr.PidsLimit = &r.PidsLimit
	}
	if r.CPUs > 0 {
		cr.CpuQuota, cr.CpuPeriod = int64(r.CPUs*cpuPeriod), cpuPeriod
	}
	return cr
}

// createGroupCgroup makes a spawn group's cgroup at path, in every
// hierarchy, with the group's limits.
func createGroupCgroup(path string, res Resources) (err error) {
	cr := res.cgroupResources()
	m, err := manager.New(&cgroups.Cgroup{Path: path, Resources: cr})
	if err != nil {
		return fmt.Errorf("group cgroup %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = m.Destroy()
		}
	}()
	if err := m.Apply(-1); err != nil { // -1: create, join nothing
		return fmt.Errorf("group cgroup %s: create: %w", path, err)
	}
	if err := m.Set(cr); err != nil {
		return fmt.Errorf("group cgroup %s: set limits: %w", path, err)
	}
	return nil
}

// releaseGroupCgroups removes the group cgroups among paths that no
// container record names any more. A group that another process is still
// filling keeps its records, and so its cgroup.
func (r *Runtime) releaseGroupCgroups(paths map[string]bool) error {
	ids, err := r.st.ids()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if len(paths) == 0 {
			break
		}
		if c, err := r.st.read(id); err == nil {
			delete(paths, c.CgroupGroup)
		}
	}
	var errs []error
	for p := range paths {
		if err := destroyCgroup(p); err != nil {
			errs = append(errs, fmt.Errorf("group cgroup %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
