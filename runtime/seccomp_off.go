//go:build !seccomp || !cgo

package runtime

import specs "github.com/opencontainers/runtime-spec/specs-go"

// SeccompSupported reports whether this build filters system calls; this
// one, built without the seccomp tag (or without cgo), does not.
const SeccompSupported = false

func defaultSeccomp(*specs.Spec) (*specs.LinuxSeccomp, error) { return nil, nil }
