package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containers/image/v5/copy"
	"github.com/containers/image/v5/docker"
	dockerarchive "github.com/containers/image/v5/docker/archive"
	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/manifest"
	ociarchive "github.com/containers/image/v5/oci/archive"
	ocilayout "github.com/containers/image/v5/oci/layout"
	"github.com/containers/image/v5/pkg/blobinfocache/none"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImportOption configures one [Store.Pull] (or [Store.Import]).
type ImportOption func(*importOptions)

type importOptions struct {
	name      string
	platform  *ispec.Platform
	tlsVerify types.OptionalBool
	authFile  string
	progress  func(Progress)
	policy    PullPolicy
}

// WithName sets the name to store the image under; it is normalized like
// [NormalizeName] and must carry a tag, not a digest.
// Default: the name the source carries (the reference pulled from a
// registry, the :REF of an archive, a docker-archive's RepoTags, an OCI
// index's org.opencontainers.image.ref.name annotation when it is a full
// reference); without one the pull fails.
func WithName(name string) ImportOption {
	return func(o *importOptions) { o.name = name }
}

// WithPlatform selects the image of an index (multi-arch image) to pull.
// Default: the host's platform (its OS, architecture and, on arm, the CPU
// variant, as containers/image detects it).
func WithPlatform(p ispec.Platform) ImportOption {
	return func(o *importOptions) { o.platform = &p }
}

// WithTLSVerify(false) lets this pull talk to any registry over plain HTTP
// or unverified TLS, like podman's and skopeo's --tls-verify=false.
// Default: TLS verified, except for registries marked insecure in the
// store's registries.conf (see [WithRegistriesConf]).
func WithTLSVerify(verify bool) ImportOption {
	return func(o *importOptions) { o.tlsVerify = types.NewOptionalBool(!verify) }
}

// WithAuthFile reads registry credentials from path (a Docker config.json
// or a containers auth.json). Default: containers/image's search order:
// $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
// ~/.config/containers/auth.json, then ~/.docker/config.json (or
// $DOCKER_CONFIG/config.json), including its credential helpers.
func WithAuthFile(path string) ImportOption {
	return func(o *importOptions) { o.authFile = path }
}

// WithProgress calls fn from one goroutine as blobs are copied. Default:
// no report.
func WithProgress(fn func(Progress)) ImportOption {
	return func(o *importOptions) { o.progress = fn }
}

// WithPullPolicy sets when a registry is asked. Default: [PullAlways].
func WithPullPolicy(p PullPolicy) ImportOption {
	return func(o *importOptions) { o.policy = p }
}

// PullPolicy says when [Store.Pull] asks the source.
type PullPolicy int

const (
	// PullAlways resolves the reference at the source (a manifest request
	// for a registry) and copies what the store lacks; an image already
	// held under the same digest is not downloaded again.
	PullAlways PullPolicy = iota
	// PullMissing returns the image stored under the name, if any, without
	// asking the source.
	PullMissing
)

// ProgressEvent is what happened to a blob.
type ProgressEvent int

const (
	ProgressStart   ProgressEvent = iota // the download of a blob begins
	ProgressRead                         // more bytes arrived
	ProgressDone                         // the blob is copied and verified
	ProgressSkipped                      // the store already holds the blob
)

// Progress is one report of a pull's progress for one blob.
type Progress struct {
	Event  ProgressEvent
	Digest digest.Digest
	// MediaType of the blob (a layer, or the config).
	MediaType string
	// Size is the blob's size in bytes, -1 if unknown.
	Size int64
	// Offset is how many bytes were copied so far.
	Offset int64
}

// progressInterval is how often containers/image reports a blob's progress.
const progressInterval = 100 * time.Millisecond

// Import copies the image of a local archive or layout into the store:
// src is oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH[:REF].
// It is [Store.Pull] without registries: any other src yields an error
// wrapping [ErrInvalidRef], and nothing goes to the network.
func (s *Store) Import(ctx context.Context, src string, opts ...ImportOption) (*Image, error) {
	transport, rest, ok := strings.Cut(src, ":")
	if !ok || rest == "" || !slices.Contains(transports, transport) {
		return nil, fmt.Errorf("import %s: %w: want oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH[:REF]", src, ErrInvalidRef)
	}
	return s.Pull(ctx, src, opts...)
}

// Pull copies the image ref into the store, unpacks the layers it does
// not hold yet, and records it under its name, replacing any image of
// that name. ref is one of
//
//	docker://NAME[:TAG|@DIGEST]  a registry (containers/image's docker transport)
//	NAME[:TAG|@DIGEST]           the same, normalized like Docker's:
//	                             "busybox" is docker.io/library/busybox:latest
//	oci-archive:PATH[:REF]       a tar of an OCI image layout
//	oci:DIR[:REF]                an OCI image layout directory
//	docker-archive:PATH[:REF]    a `docker save` tarball
//
// If the source is an index, the image for the platform (the host's, or
// [WithPlatform]) is pulled; none matching yields an error wrapping
// [ErrPlatform] that lists the platforms the index offers. An image pulled
// by digest is stored under NAME@DIGEST.
//
// Blobs are verified as they arrive (digest and size), each layer's
// uncompressed content against the config's diff_ids. Layers are kept
// unpacked only (no compressed copy) and shared by all images: a layer
// blob the store holds unpacked under the same chain ID is not
// downloaded; an image whose manifest the store already holds is recorded
// without copying anything. The store's lock is held from the copy to the
// record, so concurrent pulls (by several processes) of the same image
// all succeed, the later ones copying nothing. A pull is atomic: the
// image is visible once recorded; on failure no image record, temp file
// or newly unpacked layer is left (a config or manifest written stays in
// oci/ until [Store.Prune]), and the next pull downloads again what
// failed.
func (s *Store) Pull(ctx context.Context, ref string, opts ...ImportOption) (_ *Image, err error) {
	var o importOptions
	for _, opt := range opts {
		opt(&o)
	}
	name := ""
	if o.name != "" {
		if name, err = normalizeTag(o.name); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
	}
	src, err := parseSource(ref)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if name == "" && src.name != "" {
		name = src.name
	}
	if o.policy == PullMissing && name != "" {
		if img, err := s.Lookup(ctx, name); err == nil {
			return img, nil
		}
	}
	sys, err := s.systemContext(&o)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	// The lock covers the source too: an archive is extracted into tmp/,
	// which the next pull cleans.
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer unlock()
	s.removeStale()

	srcRef, closeSrc, err := src.open(sys)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer closeSrc()
	if name == "" {
		name = src.archiveName
	}
	if name == "" {
		return nil, fmt.Errorf("pull %s: %w: the source names no image, give it a name (WithName)", ref, ErrInvalidRef)
	}

	s.log.DebugContext(ctx, "resolving image", "ref", ref, "name", name)
	resolved, err := resolveInstance(ctx, sys, srcRef)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer resolved.close()
	instance := resolved.instance
	if src.docker != nil {
		// The copy reads exactly the manifest resolved, even if the tag
		// moves; it names it by digest.
		named, err := reference.WithDigest(reference.TrimNamed(src.docker), instance)
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		if resolved.ref, err = docker.NewReference(named); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
	}

	imgs, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if held := s.heldImage(imgs, instance); held != nil {
		s.log.DebugContext(ctx, "image already in the store", "digest", instance)
		if err := checkPlatform(held, o.platform); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		img := *held
		img.Name = name
		imgs[name] = img
		if err := s.save(imgs); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		return &img, nil
	}

	s.log.DebugContext(ctx, "copying image", "ref", ref, "digest", instance)
	streamed := &streamedLayers{dir: s.path(layersDirName), held: s.heldLayers(ctx, resolved), m: map[digest.Digest]*streamedLayer{}}
	defer streamed.cleanup()
	mfBytes, err := s.copyIn(ctx, sys, resolvedRef{ImageReference: srcRef, src: resolved}, streamed, o.progress)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	s.log.DebugContext(ctx, "unpacking image", "ref", ref)
	img, published, err := s.unpackImage(ctx, ref, mfBytes, streamed)
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
	if err = checkPlatform(img, o.platform); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	img.Name = name
	img.SourceDigest = instance
	imgs[name] = *img
	if err := s.save(imgs); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	s.log.InfoContext(ctx, "pulled image", "name", name, "digest", img.Digest, "layers", len(img.ChainIDs))
	return img, nil
}

// heldImage returns a recorded image whose manifest is instance (as
// stored, or at its source) and whose layers are all unpacked, or nil.
func (s *Store) heldImage(imgs map[string]Image, instance digest.Digest) *Image {
	for _, n := range slices.Sorted(maps.Keys(imgs)) {
		img := imgs[n]
		if img.Digest != instance && img.SourceDigest != instance {
			continue
		}
		if _, err := s.RootfsMount(&img); err != nil {
			continue
		}
		if _, err := os.Stat(s.blobPath(img.Digest)); err != nil {
			continue
		}
		return &img
	}
	return nil
}

// source is a parsed pull reference.
type source struct {
	transport string // "docker", "oci", "oci-archive", "docker-archive"
	rest      string // what follows the transport
	// name is the name the reference itself gives the image (normalized),
	// "" if it gives none.
	name string
	// archiveName is the name found inside the source once opened.
	archiveName string
	// docker is the registry reference, for the docker transport.
	docker reference.Named
}

// transports that Pull accepts with a "transport:" prefix.
var transports = []string{"oci-archive", "oci", "docker-archive"}

// parseSource parses a pull reference without touching the source.
func parseSource(ref string) (*source, error) {
	if rest, ok := strings.CutPrefix(ref, "docker://"); ok {
		return parseDocker(ref, rest)
	}
	transport, rest, ok := strings.Cut(ref, ":")
	if !ok || !slices.Contains(transports, transport) {
		if strings.Contains(ref, "://") || (ok && rest == "") {
			return nil, fmt.Errorf("%w: want NAME[:TAG|@DIGEST], docker://NAME, oci-archive:PATH[:REF], oci:DIR[:REF] or docker-archive:PATH[:REF]", ErrInvalidRef)
		}
		return parseDocker(ref, ref)
	}
	if rest == "" {
		return nil, fmt.Errorf("%w: %s: empty path", ErrInvalidRef, transport)
	}
	src := &source{transport: transport, rest: rest}
	if transport == "docker-archive" {
		r, err := dockerarchive.ParseReference(rest)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		if named := r.DockerReference(); named != nil {
			src.name = named.String()
		}
	}
	return src, nil
}

// parseDocker parses a registry reference, normalized like Docker's.
func parseDocker(ref, rest string) (*source, error) {
	named, err := reference.ParseNormalizedNamed(rest)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalidRef, err)
	}
	if _, ok := named.(reference.Digested); ok {
		if _, tagged := named.(reference.Tagged); tagged {
			// name:tag@digest: the digest decides.
			d := named.(reference.Digested).Digest()
			if named, err = reference.WithDigest(reference.TrimNamed(named), d); err != nil {
				return nil, fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalidRef, err)
			}
		}
	} else {
		named = reference.TagNameOnly(named)
	}
	return &source{transport: "docker", rest: rest, name: named.String(), docker: named}, nil
}

// open returns the containers/image reference to copy from, setting
// archiveName, and a func releasing what was opened.
func (src *source) open(sys *types.SystemContext) (types.ImageReference, func(), error) {
	nop := func() {}
	switch src.transport {
	case "docker":
		ref, err := docker.NewReference(src.docker)
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		return ref, nop, nil
	case "oci-archive", "oci":
		var ref types.ImageReference
		var err error
		if src.transport == "oci" {
			ref, err = ocilayout.ParseReference(src.rest)
		} else {
			ref, err = ociarchive.ParseReference(src.rest)
		}
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		p, image, _ := strings.Cut(src.rest, ":")
		if src.archiveName, err = ociSourceName(src.transport, p, image); err != nil {
			return nil, nop, err
		}
		return ref, nop, nil
	case "docker-archive":
		ref, err := dockerarchive.ParseReference(src.rest)
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %w", ErrInvalidRef, err)
		}
		if ref.DockerReference() != nil {
			return ref, nop, nil
		}
		// Open the archive once, both to read its tags and to copy from.
		r, readerRef, err := dockerarchive.NewReaderForReference(sys, ref)
		if err != nil {
			return nil, nop, err
		}
		closeFn := func() { _ = r.Close() }
		tags, err := r.ManifestTagsForReference(readerRef)
		if err != nil {
			closeFn()
			return nil, nop, err
		}
		if len(tags) > 0 {
			if src.archiveName, err = normalizeTag(tags[0]); err != nil {
				closeFn()
				return nil, nop, err
			}
		}
		return readerRef, closeFn, nil
	}
	return nil, nop, fmt.Errorf("%w: unsupported transport %q", ErrInvalidRef, src.transport)
}

// resolvedSource is the source opened to resolve a pull's reference,
// which the copy then reads from: it neither opens the source again (for
// a registry: a second ping and manifest request; for an archive: a
// second extraction) nor reads another manifest than the one resolved.
type resolvedSource struct {
	types.ImageSource
	// instance is the digest of the image manifest to pull, manifest and
	// mimeType its content and type.
	instance digest.Digest
	manifest []byte
	mimeType string
	// ref, if not nil, is the reference the copy sees (for a registry,
	// the image pinned by digest).
	ref types.ImageReference
	// config, if not nil, is the image's config blob of digest configDigest,
	// read (and verified) before the copy, which then reads it from here.
	config       []byte
	configDigest digest.Digest
}

// GetBlob serves the config read already from memory, the rest from the
// source.
func (rs *resolvedSource) GetBlob(ctx context.Context, info types.BlobInfo, cache types.BlobInfoCache) (io.ReadCloser, int64, error) {
	if rs.config != nil && info.Digest == rs.configDigest {
		return io.NopCloser(bytes.NewReader(rs.config)), int64(len(rs.config)), nil
	}
	return rs.ImageSource.GetBlob(ctx, info, cache)
}

// maxConfigSize bounds the config blob read before the copy.
const maxConfigSize = 8 << 20

// heldLayers returns the layer blobs of the resolved image whose layers
// the store holds unpacked, under the chain ID of every place the image
// uses them, so the copy need not download them (the store keeps no
// layer blob). It reads the image's config from the source for the
// diff_ids, and keeps it for the copy. Any failure leaves nothing held:
// the copy then downloads every layer, and reports what fails.
func (s *Store) heldLayers(ctx context.Context, rs *resolvedSource) map[digest.Digest]bool {
	m, err := manifest.FromBlob(rs.manifest, rs.mimeType)
	if err != nil {
		return nil
	}
	ci := m.ConfigInfo()
	if ci.Digest == "" || ci.Digest.Validate() != nil || ci.Size < 0 || ci.Size > maxConfigSize {
		return nil // schema 1 has no config blob
	}
	r, _, err := rs.ImageSource.GetBlob(ctx, ci, none.NoCache)
	if err != nil {
		s.log.DebugContext(ctx, "reading the config before the copy", "digest", ci.Digest, "err", err)
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
	_ = r.Close()
	if err != nil || ci.Digest.Algorithm().FromBytes(b) != ci.Digest {
		return nil
	}
	rs.config, rs.configDigest = b, ci.Digest
	var cfg ispec.Image
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil
	}
	layers := m.LayerInfos()
	if len(cfg.RootFS.DiffIDs) != len(layers) {
		return nil
	}
	held := map[digest.Digest]bool{}
	var chain digest.Digest
	for i, l := range layers {
		diffID := cfg.RootFS.DiffIDs[i]
		if diffID.Validate() != nil {
			return nil
		}
		chain = nextChainID(chain, diffID)
		_, err := existingLayer(s.layerDir(chain), chain)
		if ok, seen := held[l.Digest]; seen && !ok {
			continue
		}
		held[l.Digest] = err == nil
	}
	return held
}

// GetManifest returns the resolved image manifest as the top-level one.
func (rs *resolvedSource) GetManifest(ctx context.Context, instanceDigest *digest.Digest) ([]byte, string, error) {
	if instanceDigest == nil {
		return rs.manifest, rs.mimeType, nil
	}
	return rs.ImageSource.GetManifest(ctx, instanceDigest)
}

func (rs *resolvedSource) Reference() types.ImageReference {
	if rs.ref != nil {
		return rs.ref
	}
	return rs.ImageSource.Reference()
}

// Close does nothing: the copy does not own the source; close does.
func (rs *resolvedSource) Close() error { return nil }

func (rs *resolvedSource) close() { _ = rs.ImageSource.Close() }

// resolvedRef is a source reference whose image source is one already
// resolved.
type resolvedRef struct {
	types.ImageReference
	src *resolvedSource
}

func (r resolvedRef) NewImageSource(context.Context, *types.SystemContext) (types.ImageSource, error) {
	return r.src, nil
}

// resolveInstance opens the source and reads its manifest to find the
// image manifest to pull: the manifest itself, or the instance of an
// index for sys's platform. The caller closes the source returned.
func resolveInstance(ctx context.Context, sys *types.SystemContext, ref types.ImageReference) (_ *resolvedSource, err error) {
	is, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = is.Close()
		}
	}()
	mf, mt, err := is.GetManifest(ctx, nil)
	if err != nil {
		return nil, err
	}
	if mt == "" {
		mt = manifest.GuessMIMEType(mf)
	}
	if named := ref.DockerReference(); named != nil {
		if d, ok := named.(reference.Digested); ok {
			if ok, err := manifest.MatchesDigest(mf, d.Digest()); err != nil || !ok {
				return nil, fmt.Errorf("manifest %s: %w: the content does not match the digest", d.Digest(), ErrInvalidLayer)
			}
		}
	}
	if !manifest.MIMETypeIsMultiImage(mt) {
		if err := checkImageManifest(mf, mt); err != nil {
			return nil, err
		}
		d, err := manifest.Digest(mf)
		if err != nil {
			return nil, err
		}
		return &resolvedSource{ImageSource: is, instance: d, manifest: mf, mimeType: mt}, nil
	}
	list, err := manifest.ListFromBlob(mf, mt)
	if err != nil {
		return nil, fmt.Errorf("%w: index of media type %q: %w", ErrUnsupported, mt, err)
	}
	d, chooseErr := list.ChooseInstance(sys)
	if chooseErr != nil {
		var have []string
		for _, inst := range list.Instances() {
			u, err := list.Instance(inst)
			if err != nil || u.ReadOnly.Platform == nil {
				continue
			}
			have = append(have, FormatPlatform(*u.ReadOnly.Platform))
		}
		slices.Sort(have)
		have = slices.Compact(have)
		return nil, fmt.Errorf("%w %s: the index offers %s", ErrPlatform, FormatPlatform(wantPlatform(sys)), strings.Join(have, ", "))
	}
	imf, imt, err := is.GetManifest(ctx, &d)
	if err != nil {
		return nil, err
	}
	if imt == "" {
		imt = manifest.GuessMIMEType(imf)
	}
	if ok, err := manifest.MatchesDigest(imf, d); err != nil || !ok {
		return nil, fmt.Errorf("manifest %s: %w: the content does not match the digest", d, ErrInvalidLayer)
	}
	if manifest.MIMETypeIsMultiImage(imt) {
		return nil, fmt.Errorf("%w: index %s lists another index", ErrUnsupported, d)
	}
	if err := checkImageManifest(imf, imt); err != nil {
		return nil, err
	}
	return &resolvedSource{ImageSource: is, instance: d, manifest: imf, mimeType: imt}, nil
}

// checkImageManifest refuses a manifest pirun cannot pull.
func checkImageManifest(mf []byte, mt string) error {
	switch mt {
	case ispec.MediaTypeImageManifest, manifest.DockerV2Schema2MediaType,
		manifest.DockerV2Schema1MediaType, manifest.DockerV2Schema1SignedMediaType:
	default:
		return fmt.Errorf("%w: unknown manifest media type %q", ErrUnsupported, mt)
	}
	if _, err := manifest.FromBlob(mf, mt); err != nil {
		return fmt.Errorf("%w: manifest of media type %q: %w", ErrUnsupported, mt, err)
	}
	return nil
}

// checkPlatform refuses an image (not from an index) whose platform is
// not the one asked for with WithPlatform; without it any image goes, as
// with Docker (an image for another CPU may run under binfmt emulation).
func checkPlatform(img *Image, want *ispec.Platform) error {
	if want == nil {
		return nil
	}
	got := img.Platform
	if got.OS == want.OS && got.Architecture == want.Architecture && (want.Variant == "" || got.Variant == "" || got.Variant == want.Variant) {
		return nil
	}
	return fmt.Errorf("%w %s: the image is for %s", ErrPlatform, FormatPlatform(*want), FormatPlatform(got))
}

// wantPlatform is the platform sys selects (the host's by default).
func wantPlatform(sys *types.SystemContext) ispec.Platform {
	p := HostPlatform()
	if sys.OSChoice != "" {
		p.OS = sys.OSChoice
	}
	if sys.ArchitectureChoice != "" {
		p.Architecture, p.Variant = sys.ArchitectureChoice, sys.VariantChoice
	}
	return p
}

// copyIn copies srcRef into the store's OCI layout, unnamed (the layout's
// index.json lists each manifest once, by digest), and returns the manifest
// copied. The caller holds the lock: index.json is not safe for concurrent
// writers.
func (s *Store) copyIn(ctx context.Context, sys *types.SystemContext, srcRef types.ImageReference, streamed *streamedLayers, progress func(Progress)) ([]byte, error) {
	layoutRef, err := ocilayout.NewReference(s.path(ociDirName), "")
	if err != nil {
		return nil, err
	}
	destRef := unpackingRef{ImageReference: layoutRef, store: s, layers: streamed}
	policy, err := signature.NewPolicyContext(&signature.Policy{
		Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()},
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = policy.Destroy() }()
	opts := &copy.Options{
		SourceCtx:        sys,
		DestinationCtx:   sys,
		RemoveSignatures: true, // the policy accepts anything; do not fetch them
		// ReportWriter nil: a library stays quiet.
	}
	if progress != nil {
		ch := make(chan types.ProgressProperties)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for p := range ch {
				progress(convertProgress(p))
			}
		}()
		defer func() { close(ch); <-done }()
		opts.Progress, opts.ProgressInterval = ch, progressInterval
	}
	return copy.Image(ctx, policy, destRef, srcRef, opts)
}

func convertProgress(p types.ProgressProperties) Progress {
	out := Progress{
		Digest:    p.Artifact.Digest,
		MediaType: p.Artifact.MediaType,
		Size:      p.Artifact.Size,
		Offset:    int64(p.Offset),
	}
	switch p.Event {
	case types.ProgressEventNewArtifact:
		out.Event = ProgressStart
	case types.ProgressEventDone:
		out.Event = ProgressDone
	case types.ProgressEventSkipped:
		out.Event = ProgressSkipped
	default:
		out.Event = ProgressRead
	}
	return out
}

// noCacheDir cannot be created (its parent is a device), which makes
// containers/image use a memory-only blob info cache.
const noCacheDir = "/dev/null/pirun-no-blob-info-cache"

// registriesConf is the store's registry configuration file.
const registriesConf = "registries.conf"

// systemContext is the containers/image configuration of one pull: the
// store's registries.conf only (never /etc/containers), its tmp/, the
// pull's platform, TLS and credentials.
func (s *Store) systemContext(o *importOptions) (*types.SystemContext, error) {
	conf := s.registriesConf
	if _, err := os.Stat(conf); errors.Is(err, fs.ErrNotExist) {
		conf = os.DevNull // an empty configuration
	}
	sys := &types.SystemContext{
		BigFilesTemporaryDir:        s.path(tmpDirName),
		SystemRegistriesConfPath:    conf,
		SystemRegistriesConfDirPath: conf + ".d",
		RegistriesDirPath:           s.path("registries.d"),
		AuthFilePath:                o.authFile,
		DockerRegistryUserAgent:     "pirun",
		DockerInsecureSkipTLSVerify: o.tlsVerify,
		// containers/image keeps a blob info cache (SQLite, fsynced) under
		// /var/lib/containers by default: the store needs none (a blob is
		// reused when its file is there) and writes nothing outside its
		// root. A directory that cannot be made selects the in-memory cache.
		BlobInfoCacheDir: noCacheDir,
	}
	if o.platform != nil {
		p := o.platform
		if p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: %w: want OS/ARCH[/VARIANT]", FormatPlatform(*p), ErrInvalidRef)
		}
		sys.OSChoice, sys.ArchitectureChoice, sys.VariantChoice = p.OS, p.Architecture, p.Variant
	}
	return sys, nil
}
