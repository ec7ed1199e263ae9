// Package imagebuild writes small OCI images: pirun's default image
// (busybox httpd, see [BusyboxHTTPD]) and the fixtures of image's tests.
// Output is reproducible: fixed mtimes, sorted entries, deterministic gzip.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/umoci/oci/cas/dir"
	"github.com/opencontainers/umoci/oci/casext"
)

// Epoch is the mtime of every file written, and the image's creation time.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Image is an image to write.
type Image struct {
	// Name is the org.opencontainers.image.ref.name annotation of the
	// image in index.json ("" for none). It is written as given.
	Name     string
	Platform ispec.Platform
	Config   ispec.ImageConfig
	// Layers are uncompressed tar streams, bottom layer first; they are
	// stored gzip-compressed.
	Layers [][]byte
	// DiffIDs overrides the config's rootfs.diff_ids (nil: the digests of
	// Layers). Tests use it to craft a mismatch.
	DiffIDs []digest.Digest
}

// File is one entry of a layer tar.
type File struct {
	Name     string // relative path, e.g. "bin/busybox"
	Type     byte   // tar.TypeReg, tar.TypeDir, tar.TypeSymlink...
	Mode     int64
	Linkname string
	Data     []byte
}

// Tar returns a tar stream of files, written in the order given, owned by
// root, with mtime Epoch. Hostile entries are written as is.
func Tar(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{
			Typeflag: f.Type,
			Name:     f.Name,
			Linkname: f.Linkname,
			Mode:     f.Mode,
			ModTime:  Epoch,
			Format:   tar.FormatPAX,
		}
		if f.Type == tar.TypeReg {
			hdr.Size = int64(len(f.Data))
		}
		if f.Type == tar.TypeDir && hdr.Name[len(hdr.Name)-1] != '/' {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SortedTar is Tar with the entries sorted by name.
func SortedTar(files []File) ([]byte, error) {
	files = append([]File(nil), files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return Tar(files)
}

// HostPlatform is linux/<GOARCH>, with variant v<GOARM> (default v7) on arm.
func HostPlatform() ispec.Platform {
	p := ispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm" {
		p.Variant = "v7"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" && s.Value != "" {
					p.Variant = "v" + s.Value[:1]
				}
			}
		}
	}
	return p
}

// FullName normalizes a reference the way Docker does
// ("x" → "docker.io/library/x:latest").
func FullName(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", ref, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// WriteLayout writes img as a new OCI image layout at path, which must not
// exist yet.
func WriteLayout(ctx context.Context, path string, img Image) (err error) {
	if err := dir.Create(path); err != nil {
		return fmt.Errorf("create OCI layout %s: %w", path, err)
	}
	engine, err := dir.Open(path)
	if err != nil {
		return fmt.Errorf("open OCI layout %s: %w", path, err)
	}
	defer func() {
		if cerr := engine.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close OCI layout %s: %w", path, cerr)
		}
	}()
	e := casext.NewEngine(engine)

	diffIDs := img.DiffIDs
	var layers []ispec.Descriptor
	for i, l := range img.Layers {
		if img.DiffIDs == nil {
			diffIDs = append(diffIDs, digest.FromBytes(l))
		}
		gz, err := gzipBytes(l)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		d, size, err := e.PutBlob(ctx, bytes.NewReader(gz))
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		layers = append(layers, ispec.Descriptor{MediaType: ispec.MediaTypeImageLayerGzip, Digest: d, Size: size})
	}
	created := Epoch
	cfg := ispec.Image{
		Created:  &created,
		Platform: img.Platform,
		Config:   img.Config,
		RootFS:   ispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History:  []ispec.History{{Created: &created, CreatedBy: "pirun internal/imagebuild"}},
	}
	cd, csize, err := e.PutBlobJSON(ctx, cfg)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	m := ispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ispec.MediaTypeImageManifest,
		Config:    ispec.Descriptor{MediaType: ispec.MediaTypeImageConfig, Digest: cd, Size: csize},
		Layers:    layers,
	}
	md, msize, err := e.PutBlobJSON(ctx, m)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	platform := img.Platform
	desc := ispec.Descriptor{MediaType: ispec.MediaTypeImageManifest, Digest: md, Size: msize, Platform: &platform}
	if img.Name == "" {
		idx, err := e.GetIndex(ctx)
		if err != nil {
			return err
		}
		idx.Manifests = append(idx.Manifests, desc)
		return e.PutIndex(ctx, idx)
	}
	return e.UpdateReference(ctx, img.Name, desc)
}

// WriteArchive writes img as an OCI archive (a tar of an OCI image layout)
// at path, replacing it atomically.
func WriteArchive(ctx context.Context, path string, img Image) (err error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".imagebuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	layout := filepath.Join(tmp, "layout")
	if err := WriteLayout(ctx, layout, img); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := tarDir(f, layout); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// tarDir writes the tree under root as a tar, sorted, with fixed metadata.
func tarDir(w io.Writer, root string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: Epoch, Mode: 0o644, Typeflag: tar.TypeReg}
		var data []byte
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o755, hdr.Name+"/"
		case d.Type().IsRegular():
			if data, err = os.ReadFile(p); err != nil {
				return err
			}
			hdr.Size = int64(len(data))
		default:
			return fmt.Errorf("%s: unexpected file type %s", p, d.Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var errNoBusybox = errors.New("busybox not found (apt-get install busybox-static)")
