package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/pirun/pirun/internal/fsutil"
)

// Names inside the store root; see the package documentation.
const (
	ociDirName    = "oci"
	layersDirName = "layers"
	emptyDirName  = "empty"
	tmpDirName    = "tmp"
	imagesFile    = "images.json"
	lockFile      = "lock"

	// layerTreeName is the unpacked tree inside a layer directory, the
	// directory that goes into the overlay lowerdir list.
	layerTreeName = "root"
	// layerMetaName is the record next to the tree: full chain ID, diff ID,
	// size. It is written before the layer directory is published.
	layerMetaName = "layer.json"
	// layerIDLen is how many hex digits of the chain ID name a layer
	// directory: short, so a deep image fits the mount-options page.
	layerIDLen = 16
	// minIDPrefix is the shortest ID prefix Lookup accepts.
	minIDPrefix = 12
)

// Option configures a Store opened with [Open].
type Option func(*options)

type options struct {
	logger         *slog.Logger
	registriesConf string
}

// WithRegistriesConf sets the registry configuration file, in the format
// of containers-registries.conf(5) (v2): per-registry "insecure = true"
// (plain HTTP or unverified TLS), "blocked", [[registry.mirror]] entries,
// prefix rewrites. Short-name aliases and unqualified-search-registries
// are ignored: pirun resolves short names like Docker. Only this file is
// read, never /etc/containers/registries.conf; a missing file is an empty
// configuration. Default: registries.conf in the store's root.
func WithRegistriesConf(path string) Option {
	return func(o *options) { o.registriesConf = path }
}

// WithLogger sets the logger the store reports its work to.
// Default: a logger that discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// Store is an image store rooted in one directory. Several processes may
// use the same root at once: writers serialize on a file lock, readers see
// images.json replaced atomically.
type Store struct {
	root           string
	log            *slog.Logger
	registriesConf string
}

// Open opens the store rooted at root, creating its directories (mode 0700)
// if needed. root must not be empty nor contain ':' or ',' (it ends up in
// overlay mount options).
func Open(root string, opts ...Option) (*Store, error) {
	if root == "" {
		return nil, errors.New("open image store: empty root directory")
	}
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open image store %s: %w", root, err)
	}
	if strings.ContainsAny(abs, ":,") {
		return nil, fmt.Errorf("open image store %s: the path must not contain ':' or ','", abs)
	}
	s := &Store{root: abs, log: o.logger, registriesConf: o.registriesConf}
	if s.registriesConf == "" {
		s.registriesConf = s.path(registriesConf)
	}
	// Missing parents are made, as for Docker's --data-root.
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, fmt.Errorf("open image store %s: %w", abs, err)
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{abs, 0o700},
		{s.path(ociDirName), 0o700},
		{s.path(layersDirName), 0o700},
		{s.path(tmpDirName), 0o700},
		// empty/ is the top lowerdir: the container's / takes its
		// attributes, so it must be world-searchable.
		{s.path(emptyDirName), 0o755},
	} {
		if err := os.Mkdir(d.path, d.mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("open image store %s: %w", abs, err)
		}
	}
	return s, nil
}

// Root returns the absolute path of the store's root directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

// layerDir is the directory of the layer with the given chain ID.
func (s *Store) layerDir(chainID digest.Digest) string {
	return s.path(layersDirName, shortID(chainID))
}

func shortID(chainID digest.Digest) string {
	enc := chainID.Encoded()
	if len(enc) > layerIDLen {
		enc = enc[:layerIDLen]
	}
	return enc
}

// lock takes the store's exclusive lock, waiting for other writers until
// ctx is done. The returned func releases it.
func (s *Store) lock(ctx context.Context) (func(), error) {
	unlock, err := fsutil.Lock(ctx, s.path(lockFile))
	if err != nil {
		return nil, fmt.Errorf("lock image store %s: %w", s.root, err)
	}
	return unlock, nil
}

// load reads images.json; a missing file is an empty store.
func (s *Store) load() (map[string]Image, error) {
	b, err := os.ReadFile(s.path(imagesFile))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Image{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.path(imagesFile), err)
	}
	imgs := map[string]Image{}
	if err := json.Unmarshal(b, &imgs); err != nil {
		return nil, fmt.Errorf("read %s: %w", s.path(imagesFile), err)
	}
	return imgs, nil
}

// save replaces images.json atomically. The caller holds the lock.
func (s *Store) save(imgs map[string]Image) error {
	b, err := json.MarshalIndent(imgs, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", s.path(imagesFile), err)
	}
	if err := fsutil.WriteFileAtomic(s.path(imagesFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", s.path(imagesFile), err)
	}
	return nil
}

// Lookup finds an image by name (normalized, so "busybox" finds
// "docker.io/library/busybox:latest"), by full manifest digest or ID
// ("sha256:…"), or by a prefix of at least 12 hex digits of its ID.
// An unknown image yields an error wrapping [ErrNotFound]; an ID prefix
// shared by different images, or a malformed reference that is no ID
// either, an error wrapping [ErrInvalidRef].
func (s *Store) Lookup(ctx context.Context, ref string) (*Image, error) {
	imgs, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	names := slices.Sorted(maps.Keys(imgs))

	if strings.Contains(ref, ":") {
		if d, err := digest.Parse(ref); err == nil {
			for _, n := range names {
				if imgs[n].Digest == d || imgs[n].ID == d {
					img := imgs[n]
					return &img, nil
				}
			}
			return nil, fmt.Errorf("image %q: %w", ref, ErrNotFound)
		}
	}
	name, nameErr := NormalizeName(ref)
	if nameErr == nil {
		if img, ok := imgs[name]; ok {
			return &img, nil
		}
	}
	if len(ref) >= minIDPrefix && isHex(ref) {
		var found *Image
		for _, n := range names {
			img := imgs[n]
			if !strings.HasPrefix(img.ID.Encoded(), ref) {
				continue
			}
			if found != nil && found.ID != img.ID {
				return nil, fmt.Errorf("image %q: %w: the ID prefix matches %s and %s", ref, ErrInvalidRef, found.Name, img.Name)
			}
			if found == nil {
				found = &img
			}
		}
		if found != nil {
			return found, nil
		}
	}
	if nameErr != nil && !isHex(ref) {
		return nil, nameErr
	}
	return nil, fmt.Errorf("image %q: %w", ref, ErrNotFound)
}

// List returns every image in the store, sorted by name.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	imgs, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]Image, 0, len(imgs))
	for _, n := range slices.Sorted(maps.Keys(imgs)) {
		out = append(out, imgs[n])
	}
	return out, nil
}

// RootfsMount returns the read-only overlay mount spec of img's root
// filesystem: lowerdir=<root>/empty:<top layer>:…:<bottom layer>. It checks
// that every layer directory exists; it mounts nothing. The caller adds
// upperdir/workdir if it wants a writable rootfs.
func (s *Store) RootfsMount(img *Image) (Mount, error) {
	if img == nil || len(img.ChainIDs) == 0 {
		return Mount{}, fmt.Errorf("rootfs of image: %w: no layers", ErrInvalidLayer)
	}
	dirs := []string{s.path(emptyDirName)}
	for i := len(img.ChainIDs) - 1; i >= 0; i-- {
		dir := filepath.Join(s.layerDir(img.ChainIDs[i]), layerTreeName)
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			return Mount{}, fmt.Errorf("rootfs of image %s: layer %s: %w", img.Name, img.ChainIDs[i], ErrNotFound)
		}
		dirs = append(dirs, dir)
	}
	return Mount{
		Type:    "overlay",
		Source:  "overlay",
		Options: []string{"lowerdir=" + strings.Join(dirs, ":")},
	}, nil
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
