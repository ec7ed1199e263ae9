package runtime

import (
	"fmt"
	"math"
	"strconv"

	units "github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Resources are limits applied to each container's cgroup (cgroup v1 or
// v2, through libcontainer). The zero value sets none.
type Resources struct {
	// Memory is the memory limit in bytes (0: none). At least MinMemory.
	Memory int64 `json:"memory,omitempty"`
	// CPUs is how many CPUs' worth of time the container may use, e.g.
	// 0.5 (0: no limit). Applied as a CFS quota over a 100 ms period.
	CPUs float64 `json:"cpus,omitempty"`
	// PidsLimit caps the number of processes and threads (0: none).
	PidsLimit int64 `json:"pids_limit,omitempty"`
}

// MinMemory is the smallest memory limit accepted, as Docker's: below it
// a container's init cannot start.
const MinMemory = 6 << 20

const cpuPeriod = 100000 // microseconds

// ParseMemory parses a size such as "8m", "512k", "1g" or "1048576".
func ParseMemory(s string) (int64, error) {
	n, err := units.RAMInBytes(s)
	if err != nil {
		return 0, fmt.Errorf("memory %q: %w: use a size such as 8m, 512k or 1g", s, ErrInvalidConfig)
	}
	return n, nil
}

// ParseCPUs parses a number of CPUs such as "0.5" or "2".
func ParseCPUs(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("cpus %q: %w: use a positive number such as 0.5 or 2", s, ErrInvalidConfig)
	}
	return f, nil
}

func (r Resources) validate() error {
	switch {
	case r.Memory < 0 || r.Memory > 0 && r.Memory < MinMemory:
		return fmt.Errorf("memory limit %d bytes: %w: at least %s", r.Memory, ErrInvalidConfig, units.BytesSize(MinMemory))
	case r.CPUs < 0 || r.CPUs > 0 && r.CPUs*cpuPeriod < 1000:
		return fmt.Errorf("cpus %g: %w: at least 0.01", r.CPUs, ErrInvalidConfig)
	case r.PidsLimit < 0:
		return fmt.Errorf("pids limit %d: %w: must not be negative", r.PidsLimit, ErrInvalidConfig)
	}
	return nil
}

// spec returns the OCI resources for r.
func (r Resources) spec() *specs.LinuxResources {
	res := &specs.LinuxResources{}
	if r.Memory > 0 {
		res.Memory = &specs.LinuxMemory{Limit: &r.Memory}
	}
	if r.CPUs > 0 {
		quota, period := int64(r.CPUs*cpuPeriod), uint64(cpuPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if r.PidsLimit > 0 {
		res.Pids = &specs.LinuxPids{Limit: &r.PidsLimit}
	}
	return res
}
