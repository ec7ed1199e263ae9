package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/pkg/compression"
	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxParallelUnpack is how many layers of an image are unpacked at once.
const maxParallelUnpack = 4

// maxIndexJSON bounds how much of an untrusted index.json is read.
const maxIndexJSON = 4 << 20

// ociSourceName returns the name an OCI layout gives the image that image
// (the :REF part: a ref name, "@N" or "") selects: the ref name itself, or
// the org.opencontainers.image.ref.name annotation of the selected index
// entry, when it is a full reference such as docker.io/library/x:latest.
func ociSourceName(transport, p, image string) (string, error) {
	if image != "" && !strings.HasPrefix(image, "@") {
		return fullName(image), nil
	}
	var idx ispec.Index
	var err error
	if transport == "oci" {
		idx, err = readIndexFile(filepath.Join(p, "index.json"))
	} else {
		idx, err = readIndexFromArchive(p)
	}
	if err != nil {
		return "", err
	}
	var desc ispec.Descriptor
	switch {
	case image != "":
		n, err := strconv.Atoi(image[1:])
		if err != nil || n < 0 || n >= len(idx.Manifests) {
			return "", nil // let containers/image report the bad index
		}
		desc = idx.Manifests[n]
	case len(idx.Manifests) == 1:
		desc = idx.Manifests[0]
	default:
		return "", nil
	}
	return fullName(desc.Annotations[ispec.AnnotationRefName]), nil
}

// fullName returns s normalized if it is a full, tagged reference, else "".
func fullName(s string) string {
	named, err := reference.ParseNamed(s)
	if err != nil {
		return ""
	}
	if _, ok := named.(reference.Digested); ok {
		return ""
	}
	return reference.TagNameOnly(named).String()
}

func readIndexFile(p string) (ispec.Index, error) {
	f, err := os.Open(p)
	if err != nil {
		return ispec.Index{}, err
	}
	defer f.Close()
	return decodeIndex(p, f)
}

func readIndexFromArchive(p string) (ispec.Index, error) {
	f, err := os.Open(p)
	if err != nil {
		return ispec.Index{}, err
	}
	defer f.Close()
	r, _, err := compression.AutoDecompress(f)
	if err != nil {
		return ispec.Index{}, fmt.Errorf("%s: %w", p, err)
	}
	defer r.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ispec.Index{}, fmt.Errorf("%s: no index.json: not an OCI archive", p)
		}
		if err != nil {
			return ispec.Index{}, fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg && path.Clean(hdr.Name) == "index.json" {
			return decodeIndex(p+":index.json", tr)
		}
	}
}

func decodeIndex(what string, r io.Reader) (ispec.Index, error) {
	var idx ispec.Index
	if err := json.NewDecoder(io.LimitReader(r, maxIndexJSON)).Decode(&idx); err != nil {
		return ispec.Index{}, fmt.Errorf("%s: %w", what, err)
	}
	return idx, nil
}

// unpackImage reads the manifest and config just copied in and makes sure
// every layer is unpacked. It returns the image record (without name) and
// the layer directories it published, which the caller removes on failure.
func (s *Store) unpackImage(ctx context.Context, src string, mfBytes []byte, streamed *streamedLayers) (*Image, []string, error) {
	mdgst := digest.FromBytes(mfBytes)
	var m ispec.Manifest
	if err := json.Unmarshal(mfBytes, &m); err != nil {
		return nil, nil, fmt.Errorf("pull %s: manifest %s: %w", src, mdgst, err)
	}
	if (m.MediaType != "" && m.MediaType != ispec.MediaTypeImageManifest) || m.Config.MediaType != ispec.MediaTypeImageConfig {
		return nil, nil, fmt.Errorf("pull %s: manifest %s: %w: media type %q, config %q", src, mdgst, ErrUnsupported, m.MediaType, m.Config.MediaType)
	}
	cfgBytes, err := s.readBlob(m.Config.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("pull %s: config %s: %w", src, m.Config.Digest, err)
	}
	var cfg ispec.Image
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		return nil, nil, fmt.Errorf("pull %s: config %s: %w", src, m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, fmt.Errorf("pull %s: config %s: %w: %d diff_ids for %d layers", src, m.Config.Digest, ErrInvalidLayer, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	if len(m.Layers) == 0 {
		return nil, nil, fmt.Errorf("pull %s: manifest %s: %w: the image has no layers", src, mdgst, ErrInvalidLayer)
	}

	img := &Image{
		Digest:   mdgst,
		ID:       m.Config.Digest,
		Config:   cfg.Config,
		Platform: cfg.Platform,
		Created:  time.Now().UTC(),
	}
	if cfg.Created != nil {
		img.Created = *cfg.Created
	}
	chains := make([]digest.Digest, len(m.Layers))
	for i, l := range m.Layers {
		diffID := cfg.RootFS.DiffIDs[i]
		if err := diffID.Validate(); err != nil {
			return nil, nil, fmt.Errorf("pull %s: layer %s: %w: diff_id %q: %w", src, l.Digest, ErrInvalidLayer, diffID, err)
		}
		var parent digest.Digest
		if i > 0 {
			parent = chains[i-1]
		}
		chains[i] = nextChainID(parent, diffID)
	}
	// Each layer is unpacked into a directory of its own: all at once,
	// a few at a time (unpacking waits on the disk more than on the CPU).
	type result struct {
		meta layerMeta
		tmp  string
		err  error
	}
	results := make([]result, len(m.Layers))
	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, maxParallelUnpack)
	var wg sync.WaitGroup
	for i, l := range m.Layers {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := &results[i]
			r.meta, r.tmp, r.err = s.prepareLayer(uctx, l, cfg.RootFS.DiffIDs[i], chains[i], streamed.take(l.Digest))
			if r.err != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	tmps, dirs := make([]string, len(m.Layers)), make([]string, len(m.Layers))
	var firstErr error
	for i, r := range results {
		tmps[i], dirs[i] = r.tmp, s.layerDir(chains[i])
		// The first error that is not the cancellation it caused.
		if r.err != nil && (firstErr == nil || (errors.Is(firstErr, context.Canceled) && !errors.Is(r.err, context.Canceled))) {
			firstErr = fmt.Errorf("pull %s: layer %s: %w", src, m.Layers[i].Digest, r.err)
		}
		img.ChainIDs = append(img.ChainIDs, chains[i])
		img.Size += r.meta.Size
	}
	if firstErr != nil {
		for _, tmp := range tmps {
			if tmp != "" {
				_ = os.RemoveAll(tmp)
			}
		}
		return nil, nil, firstErr
	}
	published, err := s.publishLayers(tmps, dirs)
	if err != nil {
		return nil, published, fmt.Errorf("pull %s: publish layers: %w", src, err)
	}
	return img, published, nil
}

// readBlob reads a small blob (a config) from the OCI layout and checks
// its digest.
func (s *Store) readBlob(d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.blobPath(d))
	if err != nil {
		return nil, err
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return nil, fmt.Errorf("blob content has digest %s", got)
	}
	return b, nil
}

func (s *Store) blobPath(d digest.Digest) string {
	return s.path(ociDirName, "blobs", d.Algorithm().String(), d.Encoded())
}

// removeStale removes what crashed or interrupted pulls left in tmp/,
// layers/ (.tmp-*) and oci/ (containers/image's oci-put-blob* temp files).
// The caller holds the lock, so no pull is running.
func (s *Store) removeStale() {
	for _, d := range []struct{ dir, prefix string }{
		{s.path(tmpDirName), ""},
		{s.path(layersDirName), tmpLayerPrefix},
		{s.path(ociDirName), "oci-put-blob"},
	} {
		entries, err := os.ReadDir(d.dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), d.prefix) {
				_ = os.RemoveAll(filepath.Join(d.dir, e.Name()))
			}
		}
	}
}
