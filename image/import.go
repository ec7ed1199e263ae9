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
	"time"

	"github.com/containers/image/v5/copy"
	dockerarchive "github.com/containers/image/v5/docker/archive"
	"github.com/containers/image/v5/docker/reference"
	ociarchive "github.com/containers/image/v5/oci/archive"
	ocilayout "github.com/containers/image/v5/oci/layout"
	"github.com/containers/image/v5/pkg/compression"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImportOption configures one [Store.Import].
type ImportOption func(*importOptions)

type importOptions struct {
	name string
}

// WithName sets the name to store the imported image under; it is
// normalized like [NormalizeName] and must carry a tag, not a digest.
// Default: the name the source carries (the :REF of the source, a
// docker-archive's RepoTags, an OCI index's org.opencontainers.image.ref.name
// annotation when it is a full reference); without one Import fails.
func WithName(name string) ImportOption {
	return func(o *importOptions) { o.name = name }
}

// maxIndexJSON bounds how much of an untrusted index.json is read.
const maxIndexJSON = 4 << 20

// Import copies the image at src into the store, unpacks the layers it
// does not hold yet, and records it under its name, replacing any image of
// that name. src is one of
//
//	oci-archive:PATH[:REF]     a tar of an OCI image layout
//	oci:DIR[:REF]              an OCI image layout directory
//	docker-archive:PATH[:REF]  a `docker save` tarball
//
// If the source is an image index, the image for the host platform is
// imported. Blobs are verified on write, each layer's uncompressed content
// against the config's diff_ids. On failure no image record, temp
// directory or newly unpacked layer is left behind (copied blobs stay in
// oci/ until a prune).
func (s *Store) Import(ctx context.Context, src string, opts ...ImportOption) (_ *Image, err error) {
	var o importOptions
	for _, opt := range opts {
		opt(&o)
	}
	name := ""
	if o.name != "" {
		if name, err = normalizeTag(o.name); err != nil {
			return nil, fmt.Errorf("import %s: %w", src, err)
		}
	}
	sys := &types.SystemContext{BigFilesTemporaryDir: s.path(tmpDirName)}
	srcRef, srcName, closeSrc, err := openSource(sys, src)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	defer closeSrc()
	if name == "" {
		name = srcName
	}
	if name == "" {
		return nil, fmt.Errorf("import %s: %w: the source names no image, give it a name (WithName)", src, ErrInvalidRef)
	}

	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	defer unlock()
	s.removeStale()

	s.log.DebugContext(ctx, "copying image", "src", src, "name", name)
	mfBytes, err := s.copyIn(ctx, sys, srcRef)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	img, published, err := s.unpackImage(ctx, src, mfBytes)
	defer func() {
		if err != nil {
			for _, dir := range published {
				_ = os.RemoveAll(dir)
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	img.Name = name

	imgs, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	imgs[name] = *img
	if err := s.save(imgs); err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	s.log.InfoContext(ctx, "imported image", "name", name, "digest", img.Digest, "layers", len(img.ChainIDs))
	return img, nil
}

// openSource parses src and returns the image reference to copy from, the
// name the source carries (normalized, "" if none) and a func releasing
// what was opened.
func openSource(sys *types.SystemContext, src string) (types.ImageReference, string, func(), error) {
	nop := func() {}
	transport, rest, ok := strings.Cut(src, ":")
	if !ok || rest == "" {
		return nil, "", nop, fmt.Errorf("%w: want oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH[:REF]", ErrInvalidRef)
	}
	switch transport {
	case "oci-archive", "oci":
		var ref types.ImageReference
		var err error
		if transport == "oci" {
			ref, err = ocilayout.ParseReference(rest)
		} else {
			ref, err = ociarchive.ParseReference(rest)
		}
		if err != nil {
			return nil, "", nop, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		p, image, _ := strings.Cut(rest, ":")
		name, err := ociSourceName(transport, p, image)
		if err != nil {
			return nil, "", nop, err
		}
		return ref, name, nop, nil
	case "docker-archive":
		ref, err := dockerarchive.ParseReference(rest)
		if err != nil {
			return nil, "", nop, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		if named := ref.DockerReference(); named != nil {
			return ref, named.String(), nop, nil
		}
		// Open the archive once, both to read its tags and to copy from.
		r, readerRef, err := dockerarchive.NewReaderForReference(sys, ref)
		if err != nil {
			return nil, "", nop, err
		}
		closeFn := func() { _ = r.Close() }
		tags, err := r.ManifestTagsForReference(readerRef)
		if err != nil {
			closeFn()
			return nil, "", nop, err
		}
		name := ""
		if len(tags) > 0 {
			if name, err = normalizeTag(tags[0]); err != nil {
				closeFn()
				return nil, "", nop, err
			}
		}
		return readerRef, name, closeFn, nil
	default:
		return nil, "", nop, fmt.Errorf("%w: unsupported transport %q, want oci-archive, oci or docker-archive", ErrInvalidRef, transport)
	}
}

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

// copyIn copies srcRef into the store's OCI layout, unnamed (the layout's
// index.json lists each manifest once, by digest), and returns the manifest
// copied. The caller holds the lock: index.json is not safe for concurrent
// writers.
func (s *Store) copyIn(ctx context.Context, sys *types.SystemContext, srcRef types.ImageReference) ([]byte, error) {
	destRef, err := ocilayout.NewReference(s.path(ociDirName), "")
	if err != nil {
		return nil, err
	}
	policy, err := signature.NewPolicyContext(&signature.Policy{
		Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()},
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = policy.Destroy() }()
	return copy.Image(ctx, policy, destRef, srcRef, &copy.Options{
		SourceCtx:      sys,
		DestinationCtx: sys,
		// ReportWriter nil: a library stays quiet.
	})
}

// unpackImage reads the manifest and config just copied in and makes sure
// every layer is unpacked. It returns the image record (without name) and
// the layer directories it published, which the caller removes on failure.
func (s *Store) unpackImage(ctx context.Context, src string, mfBytes []byte) (*Image, []string, error) {
	mdgst := digest.FromBytes(mfBytes)
	var m ispec.Manifest
	if err := json.Unmarshal(mfBytes, &m); err != nil {
		return nil, nil, fmt.Errorf("import %s: manifest %s: %w", src, mdgst, err)
	}
	if (m.MediaType != "" && m.MediaType != ispec.MediaTypeImageManifest) || m.Config.MediaType != ispec.MediaTypeImageConfig {
		return nil, nil, fmt.Errorf("import %s: manifest %s: unsupported media types %q, config %q", src, mdgst, m.MediaType, m.Config.MediaType)
	}
	cfgBytes, err := s.readBlob(m.Config.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("import %s: config %s: %w", src, m.Config.Digest, err)
	}
	var cfg ispec.Image
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		return nil, nil, fmt.Errorf("import %s: config %s: %w", src, m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, fmt.Errorf("import %s: config %s: %w: %d diff_ids for %d layers", src, m.Config.Digest, ErrInvalidLayer, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	if len(m.Layers) == 0 {
		return nil, nil, fmt.Errorf("import %s: manifest %s: %w: the image has no layers", src, mdgst, ErrInvalidLayer)
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
	var published []string
	var chain digest.Digest
	for i, l := range m.Layers {
		diffID := cfg.RootFS.DiffIDs[i]
		if err := diffID.Validate(); err != nil {
			return nil, published, fmt.Errorf("import %s: layer %s: %w: diff_id %q: %w", src, l.Digest, ErrInvalidLayer, diffID, err)
		}
		if chain == "" {
			chain = diffID
		} else {
			chain = digest.FromString(chain.String() + " " + diffID.String())
		}
		meta, dir, err := s.ensureLayer(ctx, l, diffID, chain)
		if dir != "" {
			published = append(published, dir)
		}
		if err != nil {
			return nil, published, fmt.Errorf("import %s: layer %s: %w", src, l.Digest, err)
		}
		img.ChainIDs = append(img.ChainIDs, chain)
		img.Size += meta.Size
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

// removeStale removes what crashed imports left in tmp/ and layers/.
// The caller holds the lock, so no import is running.
func (s *Store) removeStale() {
	for _, dir := range []string{s.path(tmpDirName), s.path(layersDirName)} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if dir == s.path(tmpDirName) || strings.HasPrefix(e.Name(), tmpLayerPrefix) {
				_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
}
