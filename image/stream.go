package image

import (
	"context"
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
	layers *streamedLayers
}

func (r unpackingRef) NewImageDestination(ctx context.Context, sys *types.SystemContext) (types.ImageDestination, error) {
	d, err := r.ImageReference.NewImageDestination(ctx, sys)
	if err != nil {
		return nil, err
	}
	return &unpackingDest{ImageDestination: d, layers: r.layers}, nil
}

type unpackingDest struct {
	types.ImageDestination
	layers *streamedLayers
}

func (d *unpackingDest) PutBlob(ctx context.Context, stream io.Reader, info types.BlobInfo, cache types.BlobInfoCache, isConfig bool) (types.BlobInfo, error) {
	if isConfig || info.Digest == "" || info.Digest.Validate() != nil {
		return d.ImageDestination.PutBlob(ctx, stream, info, cache, isConfig)
	}
	if _, err := layerCompression(info.MediaType); err != nil {
		return d.ImageDestination.PutBlob(ctx, stream, info, cache, isConfig)
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
	bi, err := d.ImageDestination.PutBlob(ctx, io.TeeReader(stream, pw), info, cache, isConfig)
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
