package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pirun/pirun/image"
)

// pullFlag is --pull on spawn and run, as podman names it: when to pull
// the image from its registry before starting containers.
type pullFlag struct{ policy string }

func (p *pullFlag) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.policy, "pull", "missing", "pull the image first: missing (only if the store lacks it), always, or never")
}

// ensure makes sure the store holds ref, pulling it as --pull says. A name
// the store holds is used without any network look-up unless --pull=always.
func (p *pullFlag) ensure(ctx context.Context, g *globals, ref string, quiet bool) error {
	var policy image.PullPolicy
	switch p.policy {
	case "never":
		return nil
	case "missing":
		policy = image.PullMissing
	case "always":
		policy = image.PullAlways
	default:
		return fmt.Errorf("--pull %q: use missing, always or never", p.policy)
	}
	s, err := g.store()
	if err != nil {
		return err
	}
	if policy == image.PullMissing {
		_, err := s.Lookup(ctx, ref)
		if err == nil || !errors.Is(err, image.ErrNotFound) {
			return err
		}
	}
	opts := []image.ImportOption{image.WithPullPolicy(policy)}
	var prog *pullProgress
	if !quiet && isTerminal(os.Stderr) {
		fmt.Fprintf(os.Stderr, "pulling %s\n", ref)
		prog = newPullProgress(os.Stderr)
		opts = append(opts, image.WithProgress(prog.report))
	}
	_, err = s.Pull(ctx, ref, opts...)
	if prog != nil {
		prog.wait()
	}
	if err != nil {
		return fmt.Errorf("image %q is not in the store, and pulling it failed: %w", ref, err)
	}
	return nil
}
