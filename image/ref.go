package image

import (
	"fmt"

	"github.com/containers/image/v5/docker/reference"
)

// NormalizeName returns ref normalized the way Docker does: a missing
// registry becomes docker.io, a missing namespace on docker.io becomes
// library/, a missing tag becomes :latest. So "rpi-busybox-httpd" and
// "docker.io/library/rpi-busybox-httpd:latest" name the same image.
// A reference carrying a digest is kept as is. A malformed reference
// yields an error wrapping [ErrInvalidRef] that names the input.
func NormalizeName(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalidRef, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// normalizeTag is NormalizeName for names the store keeps an image under:
// those must carry a tag, not a digest that the store cannot vouch for.
func normalizeTag(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalidRef, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return "", fmt.Errorf("image reference %q: %w: a stored image is named by a tag, not a digest", ref, ErrInvalidRef)
	}
	return reference.TagNameOnly(named).String(), nil
}

// FamiliarName returns the short form of a normalized name, for display:
// "docker.io/library/x:latest" becomes "x:latest". A name that does not
// parse is returned unchanged.
func FamiliarName(name string) string {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	return reference.FamiliarString(named)
}
