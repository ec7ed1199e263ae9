package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pirun/pirun/internal/fsutil"
)

// Remove removes the image record named name (normalized, or a digest or
// ID as [Store.Lookup] takes) and returns it. Its blobs and layers stay
// until [Store.Prune]. An unknown image yields an error wrapping
// [ErrNotFound]. Whether a container uses the image is the caller's
// business (the store does not know containers).
func (s *Store) Remove(ctx context.Context, name string) (*Image, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("remove image %q: %w", name, err)
	}
	defer unlock()
	img, err := s.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	imgs, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("remove image %q: %w", name, err)
	}
	delete(imgs, img.Name)
	if err := s.save(imgs); err != nil {
		return nil, fmt.Errorf("remove image %q: %w", name, err)
	}
	return img, nil
}

// PruneOption configures [Store.Prune].
type PruneOption func(*pruneOptions)

type pruneOptions struct {
	keep []digest.Digest
}

// WithKeep keeps the blobs and layers of the image manifests given by
// digest even if no image record names them: the images of running
// containers, removed with rmi -f. Default: keep only recorded images.
func WithKeep(manifests ...digest.Digest) PruneOption {
	return func(o *pruneOptions) { o.keep = append(o.keep, manifests...) }
}

// PruneReport says what [Store.Prune] removed.
type PruneReport struct {
	Blobs  int   `json:"blobs"`
	Layers int   `json:"layers"`
	Bytes  int64 `json:"bytes"` // bytes freed: the blobs', and the unpacked layers' (their uncompressed size)
}

// Prune removes the blobs and unpacked layer directories that no image
// record (and no manifest of [WithKeep]) references, and every layer blob
// (the store keeps layers unpacked only; older pirun versions kept the
// blobs too), and drops the other manifests from the OCI layout's
// index.json. It holds the store's lock.
func (s *Store) Prune(ctx context.Context, opts ...PruneOption) (_ PruneReport, err error) {
	var o pruneOptions
	for _, opt := range opts {
		opt(&o)
	}
	var rep PruneReport
	unlock, err := s.lock(ctx)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	defer unlock()
	s.removeStale()
	imgs, err := s.load()
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	manifests := map[digest.Digest]bool{}
	for _, img := range imgs {
		manifests[img.Digest] = true
	}
	for _, d := range o.keep {
		manifests[d] = true
	}
	blobs := map[digest.Digest]bool{}
	layers := map[string]bool{}
	var index []ispec.Descriptor
	for md := range manifests {
		b, err := s.readBlob(md)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a kept manifest gone already
		}
		if err != nil {
			return rep, fmt.Errorf("prune: manifest %s: %w", md, err)
		}
		var m ispec.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return rep, fmt.Errorf("prune: manifest %s: %w", md, err)
		}
		// Layer blobs are not kept: a layer is used unpacked. Those an
		// older pirun stored go too (the next pull of an image whose
		// layer directory is gone downloads it again).
		blobs[md], blobs[m.Config.Digest] = true, true
		index = append(index, ispec.Descriptor{MediaType: ispec.MediaTypeImageManifest, Digest: md, Size: int64(len(b))})
		cb, err := s.readBlob(m.Config.Digest)
		if err != nil {
			return rep, fmt.Errorf("prune: config %s: %w", m.Config.Digest, err)
		}
		var cfg ispec.Image
		if err := json.Unmarshal(cb, &cfg); err != nil {
			return rep, fmt.Errorf("prune: config %s: %w", m.Config.Digest, err)
		}
		var chain digest.Digest
		for _, diffID := range cfg.RootFS.DiffIDs {
			chain = nextChainID(chain, diffID)
			layers[shortID(chain)] = true
		}
	}
	for _, img := range imgs { // recorded chain IDs, whatever the config says
		for _, c := range img.ChainIDs {
			layers[shortID(c)] = true
		}
	}

	// index.json first: it must never list a removed blob.
	if err := s.writeOCIIndex(index); err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	blobDir := s.path(ociDirName, "blobs", "sha256")
	entries, err := os.ReadDir(blobDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range entries {
		if blobs[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] {
			continue
		}
		fi, _ := e.Info()
		if err := os.Remove(filepath.Join(blobDir, e.Name())); err != nil {
			return rep, fmt.Errorf("prune: %w", err)
		}
		rep.Blobs++
		if fi != nil {
			rep.Bytes += fi.Size()
		}
	}
	entries, err = os.ReadDir(s.path(layersDirName))
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range entries {
		if layers[e.Name()] || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if meta, err := readLayerMeta(filepath.Join(s.path(layersDirName), e.Name())); err == nil {
			rep.Bytes += meta.Size
		}
		// Rename first so a half-removed layer is never taken for a whole one.
		tmp := filepath.Join(s.path(layersDirName), tmpLayerPrefix+"rm-"+e.Name())
		if err := os.Rename(filepath.Join(s.path(layersDirName), e.Name()), tmp); err != nil {
			return rep, fmt.Errorf("prune: %w", err)
		}
		if err := os.RemoveAll(tmp); err != nil {
			return rep, fmt.Errorf("prune: %w", err)
		}
		rep.Layers++
	}
	return rep, nil
}

// writeOCIIndex replaces the OCI layout's index.json.
func (s *Store) writeOCIIndex(manifests []ispec.Descriptor) error {
	idx := ispec.Index{MediaType: ispec.MediaTypeImageIndex, Manifests: manifests}
	idx.SchemaVersion = 2
	if idx.Manifests == nil {
		idx.Manifests = []ispec.Descriptor{}
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(s.path(ociDirName, "index.json"), b, 0o644)
}
