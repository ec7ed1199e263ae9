package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containers/image/v5/pkg/compression"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/fsutil"
)

// tmpLayerPrefix names the temp directories layers are unpacked into.
const tmpLayerPrefix = ".tmp-"

// layerMeta is layers/<id>/layer.json.
type layerMeta struct {
	ChainID digest.Digest `json:"chain_id"`
	DiffID  digest.Digest `json:"diff_id"`
	// Size is the size in bytes of the uncompressed layer tar.
	Size int64 `json:"size"`
}

func readLayerMeta(dir string) (layerMeta, error) {
	var meta layerMeta
	b, err := os.ReadFile(filepath.Join(dir, layerMetaName))
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return meta, fmt.Errorf("%s: %w", filepath.Join(dir, layerMetaName), err)
	}
	return meta, nil
}

// prepareLayer makes sure the layer with chain ID chain can be published
// in layers/<short chain>/. If it is there already, it returns its record
// and tmp "". Otherwise it returns the record and tmp, a layers/.tmp-*
// directory holding the unpacked tree, checked against diffID, and its
// layer.json, neither made durable yet (see publishLayers). The caller
// holds the lock and removes tmp if it does not publish it.
//
// pre, if not nil, is the layer already unpacked while its blob was
// downloaded; prepareLayer takes its directory over (or removes it).
func (s *Store) prepareLayer(ctx context.Context, desc ispec.Descriptor, diffID, chain digest.Digest, pre *streamedLayer) (_ layerMeta, tmp string, err error) {
	defer func() {
		if err != nil && tmp != "" {
			_ = os.RemoveAll(tmp)
			tmp = ""
		}
	}()
	if pre != nil {
		tmp = pre.tmp
	}
	if meta, err := existingLayer(s.layerDir(chain), chain); err == nil || !errors.Is(err, fs.ErrNotExist) {
		if tmp != "" {
			_ = os.RemoveAll(tmp)
		}
		return meta, "", err
	}

	var size int64
	if pre != nil {
		if pre.err != nil {
			return layerMeta{}, tmp, pre.err
		}
		if pre.diffID != diffID {
			return layerMeta{}, tmp, fmt.Errorf("%w: uncompressed content has digest %s, the config's diff_id is %s", ErrInvalidLayer, pre.diffID, diffID)
		}
		size = pre.size
	} else {
		// Not streamed: the copy found the blob in oci/ (a store written
		// before layer blobs were dropped, or a layer of a media type the
		// streaming unpacker leaves alone).
		if _, err := os.Stat(s.blobPath(desc.Digest)); err != nil {
			return layerMeta{}, "", fmt.Errorf("neither the layer (chain ID %s) nor its blob is in the store: %w", chain, err)
		}
		if tmp, err = newLayerTemp(s.path(layersDirName), shortID(chain)); err != nil {
			return layerMeta{}, "", err
		}
		if size, err = unpackBlob(ctx, filepath.Join(tmp, layerTreeName), s.blobPath(desc.Digest), desc, diffID); err != nil {
			return layerMeta{}, tmp, err
		}
	}
	meta := layerMeta{ChainID: chain, DiffID: diffID, Size: size}
	b, err := json.Marshal(meta)
	if err != nil {
		return layerMeta{}, tmp, err
	}
	if err := os.WriteFile(filepath.Join(tmp, layerMetaName), append(b, '\n'), 0o600); err != nil {
		return layerMeta{}, tmp, err
	}
	return meta, tmp, nil
}

// publishLayers renames each prepared layers/.tmp-* directory (of tmps,
// "" for none) to its layer directory (of dirs), after one syncfs of the
// store's file system, which also makes durable the blobs the pull wrote:
// a layer directory exists only complete, even after a crash, and so does
// what an image record written next refers to. It returns the directories
// it published; a layer another process published first is kept, and its
// temp directory removed. The caller holds the lock.
func (s *Store) publishLayers(tmps, dirs []string) (published []string, err error) {
	defer func() {
		for _, tmp := range tmps {
			if tmp != "" {
				_ = os.RemoveAll(tmp)
			}
		}
	}()
	layers := s.path(layersDirName)
	if err := syncFS(layers); err != nil {
		return nil, err
	}
	for i, tmp := range tmps {
		if tmp == "" {
			continue
		}
		// Published: the layer directory is never written again.
		if err := os.Rename(tmp, dirs[i]); err != nil {
			if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
				continue // another process published it first: keep theirs
			}
			return published, err
		}
		tmps[i] = ""
		published = append(published, dirs[i])
	}
	return published, fsutil.SyncDir(layers)
}

// syncFS makes everything written to the file system holding dir durable.
// One syncfs costs less than an fsync of each file of a layer: the flushes
// are one, and the writes are issued together.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}

// newLayerTemp makes layers/.tmp-<name>-*/root/ and returns the
// .tmp-* directory.
func newLayerTemp(layers, name string) (string, error) {
	tmp, err := os.MkdirTemp(layers, tmpLayerPrefix+name+"-")
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(filepath.Join(tmp, layerTreeName), 0o755); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	return tmp, nil
}

// nextChainID is the chain ID of the layer diffID on top of the layers of
// chain ID parent ("" for none): the OCI image spec's definition.
func nextChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

// existingLayer returns the record of the published layer directory dir,
// checking it holds chain and not another chain ID sharing its prefix.
// A missing directory yields an error wrapping fs.ErrNotExist.
func existingLayer(dir string, chain digest.Digest) (layerMeta, error) {
	if _, err := os.Lstat(dir); err != nil {
		return layerMeta{}, err
	}
	meta, err := readLayerMeta(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return layerMeta{}, fmt.Errorf("layer directory %s has no %s: remove it", dir, layerMetaName)
	}
	if err != nil {
		return layerMeta{}, err
	}
	if meta.ChainID != chain {
		return layerMeta{}, fmt.Errorf("layer directory %s holds chain ID %s, not %s (prefix collision)", dir, meta.ChainID, chain)
	}
	return meta, nil
}

// unpackBlob unpacks the layer blob at blobPath into tree, converting
// whiteouts for overlayfs, and checks its uncompressed stream against
// diffID. It returns the uncompressed size. The blob's own digest was
// verified when it was written (by containers/image).
func unpackBlob(ctx context.Context, tree, blobPath string, desc ispec.Descriptor, diffID digest.Digest) (int64, error) {
	f, err := os.Open(blobPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	got, size, err := unpackStream(ctx, tree, f, desc.MediaType)
	if err != nil {
		return 0, err
	}
	if got != diffID {
		return 0, fmt.Errorf("%w: uncompressed content has digest %s, the config's diff_id is %s", ErrInvalidLayer, got, diffID)
	}
	return size, nil
}

// streamBufSize is the read buffer of a layer stream.
const streamBufSize = 64 << 10

// unpackStream unpacks the (compressed) layer blob r of the given media
// type into tree and returns the digest and size of its uncompressed
// content. It reads r to its end.
func unpackStream(ctx context.Context, tree string, r io.Reader, mediaType string) (digest.Digest, int64, error) {
	want, err := layerCompression(mediaType)
	if err != nil {
		return "", 0, err
	}
	// One buffer between the stream and the decompressor (which reads
	// from it directly): a layer arriving through a pipe is read in large
	// pieces, not in the decompressor's 4 KiB ones, each a hand-off
	// between goroutines.
	br := bufio.NewReaderSize(r, streamBufSize)
	head, err := br.Peek(8)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", 0, fmt.Errorf("%w: %w", ErrInvalidLayer, err)
	}
	algo, decompress, _, err := compression.DetectCompressionFormat(bytes.NewReader(head))
	if err != nil {
		return "", 0, fmt.Errorf("%w: %w", ErrInvalidLayer, err)
	}
	r = br
	if algo.BaseVariantName() != want {
		return "", 0, fmt.Errorf("%w: media type %s but the content is compressed with %q", ErrInvalidLayer, mediaType, algo.BaseVariantName())
	}
	if decompress != nil {
		var rc io.ReadCloser
		if want == "gzip" {
			// Not containers/image's parallel gzip reader: its read-ahead
			// takes 4 MiB per layer and a goroutine hand-off per block,
			// while a layer is already unpacked beside the others.
			rc, err = gzip.NewReader(r)
		} else {
			rc, err = decompress(r)
		}
		if err != nil {
			return "", 0, fmt.Errorf("%w: %w", ErrInvalidLayer, err)
		}
		defer rc.Close()
		r = rc
	}
	diffDigester := digest.Canonical.Digester()
	counter := &countWriter{}
	stream := io.TeeReader(r, io.MultiWriter(diffDigester.Hash(), counter))
	if err := unpackTar(ctx, tree, stream); err != nil {
		return "", 0, err
	}
	// Hash what follows the tar end marker too.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return "", 0, fmt.Errorf("%w: %w", ErrInvalidLayer, err)
	}
	return diffDigester.Digest(), counter.n, nil
}

// layerCompression returns the compression a layer media type announces,
// named like containers/image's compression algorithms ("" for none).
func layerCompression(mediaType string) (string, error) {
	base, suffix, _ := strings.Cut(mediaType, "+")
	switch base {
	case ispec.MediaTypeImageLayer,
		ispec.MediaTypeImageLayerNonDistributable: //nolint:staticcheck // still found in the wild
		switch suffix {
		case "", "gzip", "zstd":
			return suffix, nil
		}
	case "application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		if suffix == "" {
			return "gzip", nil
		}
	case "application/vnd.docker.image.rootfs.diff.tar":
		if suffix == "" {
			return "", nil
		}
	}
	return "", fmt.Errorf("%w: unsupported media type %q", ErrInvalidLayer, mediaType)
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
