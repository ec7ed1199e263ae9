package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/internal/testutil"
)

// FuzzUnpackTar feeds arbitrary bytes to the layer unpacker: it may fail,
// but never writes outside the layer tree.
func FuzzUnpackTar(f *testing.F) {
	for _, files := range [][]imagebuild.File{
		{{Name: "bin", Type: tar.TypeDir, Mode: 0o755}, {Name: "bin/sh", Type: tar.TypeSymlink, Linkname: "busybox"}, {Name: "a", Type: tar.TypeReg, Mode: 0o644, Data: []byte("a")}},
		{{Name: "x", Type: tar.TypeSymlink, Linkname: "/"}, {Name: "x/evil", Type: tar.TypeReg, Mode: 0o644}},
		{{Name: "../evil", Type: tar.TypeReg, Mode: 0o644}},
		{{Name: "d", Type: tar.TypeDir, Mode: 0o755}, {Name: "d/.wh..wh..opq", Type: tar.TypeReg}, {Name: ".wh.gone", Type: tar.TypeReg}},
		{{Name: "h", Type: tar.TypeLink, Linkname: "a"}, {Name: "a", Type: tar.TypeReg}},
	} {
		b, err := imagebuild.Tar(files)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		testutil.RequiresRoot(t)
		parent := t.TempDir()
		tree := filepath.Join(parent, "tree")
		if err := os.Mkdir(tree, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = unpackTar(context.Background(), tree, bytes.NewReader(b))
		entries, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			t.Fatalf("unpacking wrote outside the tree: %v", entries)
		}
	})
}
