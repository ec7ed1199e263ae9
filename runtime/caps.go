package runtime

import (
	"fmt"
	"slices"
	"strings"

	"github.com/moby/sys/capability"
)

// capSet applies --cap-add and --cap-drop to Docker's default set. Names
// are case-insensitive, with or without the CAP_ prefix; ALL means every
// capability the library knows.
func capSet(add, drop []string) ([]string, error) {
	known := map[string]bool{}
	var all []string
	for _, c := range capability.ListKnown() {
		name := "CAP_" + strings.ToUpper(c.String())
		known[name] = true
		all = append(all, name)
	}
	norm := func(names []string, flag string) ([]string, error) {
		var out []string
		for _, n := range names {
			n = strings.ToUpper(strings.TrimSpace(n))
			if n == "ALL" {
				out = append(out, all...)
				continue
			}
			if !strings.HasPrefix(n, "CAP_") {
				n = "CAP_" + n
			}
			if !known[n] {
				return nil, fmt.Errorf("%s %q: %w: no such capability", flag, n, ErrInvalidConfig)
			}
			out = append(out, n)
		}
		return out, nil
	}
	adds, err := norm(add, "--cap-add")
	if err != nil {
		return nil, err
	}
	drops, err := norm(drop, "--cap-drop")
	if err != nil {
		return nil, err
	}
	caps := slices.Clone(defaultCaps)
	for _, c := range adds {
		if !slices.Contains(caps, c) {
			caps = append(caps, c)
		}
	}
	caps = slices.DeleteFunc(caps, func(c string) bool { return slices.Contains(drops, c) })
	slices.Sort(caps)
	return caps, nil
}

// Seccomp settings of Config.Seccomp.
const (
	SeccompDefault    = "default"    // Docker's default profile
	SeccompUnconfined = "unconfined" // no system call filter
)
