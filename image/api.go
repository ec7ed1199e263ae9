package image

// This file is the contract that runtime/ and cmd/pirun build on.
// Keep the exported names and their meaning; implement them elsewhere.

import (
	"errors"
	"time"

	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Sentinel errors, wrapped with the object's name: callers use errors.Is.
var (
	ErrNotFound     = errors.New("image not found")
	ErrInvalidRef   = errors.New("invalid image reference")
	ErrInvalidLayer = errors.New("invalid layer")
	// ErrPlatform: an index holds no image for the platform wanted.
	ErrPlatform = errors.New("no image for the platform")
	// ErrUnsupported: a manifest or config of a media type pirun cannot run.
	ErrUnsupported = errors.New("unsupported image")
	// ErrInUse: a container uses the image (returned by callers that know
	// the containers, such as pirun rmi).
	ErrInUse = errors.New("image in use")
)

// Image is one image in the store. It is serialized in images.json.
type Image struct {
	// Name is the normalized reference, e.g. docker.io/library/rpi-busybox-httpd:latest.
	Name string `json:"name"`
	// Digest is the digest of the image manifest, as stored (OCI).
	Digest digest.Digest `json:"digest"`
	// SourceDigest is the digest of the manifest at the source it was
	// pulled from (a registry's digest), which differs from Digest when
	// containers/image converted a Docker manifest to OCI.
	SourceDigest digest.Digest `json:"source_digest,omitempty"`
	// ID is the digest of the image config.
	ID digest.Digest `json:"id"`
	// Config is the runtime part of the image config (Entrypoint, Cmd, Env,
	// WorkingDir, User, ExposedPorts...).
	Config ispec.ImageConfig `json:"config"`
	// Platform the image was built for.
	Platform ispec.Platform `json:"platform"`
	// ChainIDs of the layers, bottom layer first.
	ChainIDs []digest.Digest `json:"chain_ids"`
	// Created is when the image was created (from its config), or imported.
	Created time.Time `json:"created"`
	// Size is the total size in bytes of the unpacked layers.
	Size int64 `json:"size"`
}

// Mount is a mount spec: what to mount, never mounted by this package.
type Mount struct {
	Type    string   // "overlay"
	Source  string   // "overlay"
	Options []string // e.g. "lowerdir=/var/lib/pirun/empty:/var/lib/pirun/layers/ab12…:…"
}
