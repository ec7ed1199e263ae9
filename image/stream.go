package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
)

// Layers are unpacked while they are downloaded: the store's OCI layout
// is wrapped in a destination whose PutBlob tees each layer blob into an
// unpacker. The unpacked tree waits in layers/.tmp-* until the config
// gives its diff_id and chain ID; prepareLayer then checks it and
// publishLayers publishes it (or, if the layer is already there or the
// blob failed, it is removed).
// Unpacking stays confined to its own fresh directory, so unverified
// bytes can do no harm before the blob's digest is checked at its end.

// streamedLayer is a layer blob unpacked during its download.
type streamedLayer struct {
	tmp    string // layers/.tmp-* holding root/
	diffID digest.Digest
	size   int64
	err    error // the unpacker's error (a hostile layer), checked by prepareLayer
}

// streamedLayers collects the layers unpacked during one copy.
type streamedLayers struct {
	dir string // layers/
	mu  sync.Mutex
	m   map[digest.Digest]*streamedLayer
}

// cleanup removes the temp directories no prepareLayer took over.
func (sl *streamedLayers) cleanup() {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for _, l := range sl.m {
		if l.tmp != "" {
			_ = os.RemoveAll(l.tmp)
		}
	}
}

// unpackingRef is the store's OCI layout reference whose destination
// unpacks layers as they arrive.
type unpackingRef struct {
	types.ImageReference
	store  *Store
	layers *streamedLayers
}

func (r unpackingRef) NewImageDestination(ctx context.Context, sys *types.SystemContext) (types.ImageDestination, error) {
	d, err := r.ImageReference.NewImageDestination(ctx, sys)
	if err != nil {
		return nil, err
	}
	return &unpackingDest{ImageDestination: d, store: r.store, layers: r.layers}, nil
}

// unpackingDest writes blobs into the store's OCI layout itself, as the
// layout's own destination does but without an fsync per blob: the pull
// makes everything it wrote durable with one syncfs before it publishes
// anything (see publishLayers). Manifests and index.json are left to the
// layout's destination.
type unpackingDest struct {
	types.ImageDestination
	store  *Store
	layers *streamedLayers
}

func (d *unpackingDest) PutBlob(ctx context.Context, stream io.Reader, info types.BlobInfo, cache types.BlobInfoCache, isConfig bool) (types.BlobInfo, error) {
	if isConfig || info.Digest == "" || info.Digest.Validate() != nil {
		return d.writeBlob(stream, info)
	}
	if _, err := layerCompression(info.MediaType); err != nil {
		return d.writeBlob(stream, info)
	}
	l := &streamedLayer{}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.tmp, l.err = newLayerTemp(d.layers.dir, "blob-"+shortID(info.Digest))
		if l.err == nil {
			l.diffID, l.size, l.err = unpackStream(ctx, filepath.Join(l.tmp, layerTreeName), pr, info.MediaType)
		}
		// Never hold the download up: drain what the unpacker left.
		_, _ = io.Copy(io.Discard, pr)
	}()
	bi, err := d.writeBlob(io.TeeReader(stream, pw), info)
	if err != nil {
		pw.CloseWithError(err)
	} else {
		pw.Close()
	}
	<-done
	if err != nil || bi.Digest != info.Digest {
		if l.tmp != "" {
			_ = os.RemoveAll(l.tmp)
		}
		return bi, err
	}
	d.layers.mu.Lock()
	if old := d.layers.m[info.Digest]; old != nil && old.tmp != "" {
		_ = os.RemoveAll(old.tmp)
	}
	d.layers.m[info.Digest] = l
	d.layers.mu.Unlock()
	return bi, nil
}

// writeBlob writes stream to the layout's blob of info's digest (computed
// if info has no sha256 one) through a temp file oci/oci-put-blob*, which
// removeStale cleans up after a crash. As for any destination of
// containers/image, a digest given is one the copy verifies: a stream
// read to its end without error matches it.
func (d *unpackingDest) writeBlob(stream io.Reader, info types.BlobInfo) (_ types.BlobInfo, err error) {
	f, err := os.CreateTemp(d.store.path(ociDirName), "oci-put-blob")
	if err != nil {
		return types.BlobInfo{}, err
	}
	name := f.Name()
	defer func() {
		_ = f.Close() // a second Close only fails
		if err != nil {
			_ = os.Remove(name)
		}
	}()
	dgst := info.Digest
	var digester digest.Digester
	if dgst == "" || dgst.Algorithm() != digest.Canonical {
		digester = digest.Canonical.Digester()
		stream = io.TeeReader(stream, digester.Hash())
	}
	size, err := io.Copy(f, stream)
	if err != nil {
		return types.BlobInfo{}, err
	}
	if digester != nil {
		dgst = digester.Digest()
	}
	if info.Size != -1 && size != info.Size {
		return types.BlobInfo{}, fmt.Errorf("blob %s: size %d, want %d", dgst, size, info.Size)
	}
	if err := f.Chmod(0o644); err != nil {
		return types.BlobInfo{}, err
	}
	if err := f.Close(); err != nil {
		return types.BlobInfo{}, err
	}
	p := d.store.blobPath(dgst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return types.BlobInfo{}, err
	}
	if err := os.Rename(name, p); err != nil {
		return types.BlobInfo{}, err
	}
	return types.BlobInfo{Digest: dgst, Size: size}, nil
}

// take hands the layer unpacked from blob d over to the caller (nil if
// none): cleanup no longer removes it.
func (sl *streamedLayers) take(d digest.Digest) *streamedLayer {
	if sl == nil {
		return nil
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	l := sl.m[d]
	delete(sl.m, d)
	return l
}
