//go:build seccomp && cgo

package runtime

import (
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SeccompSupported reports whether this build filters system calls: it is
// built with the seccomp tag, linking libseccomp (cgo), which libcontainer
// uses to load the filter in each container's init.
const SeccompSupported = true

// defaultSeccomp returns Docker's default seccomp profile (moby/profiles)
// for spec, whose capabilities widen it as they do in Docker.
func defaultSeccomp(spec *specs.Spec) (*specs.LinuxSeccomp, error) {
	return seccomp.GetDefaultProfile(spec)
}
