package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apexlog "github.com/apex/log"
	apexdiscard "github.com/apex/log/handlers/discard"
	"github.com/opencontainers/umoci/oci/layer"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/internal/testutil"
)

// TestExtractMatchesUmoci unpacks layers with pirun's extractor and with
// umoci's (which pirun used before, in overlayfs mode) and compares the
// trees: types, modes, owners, sizes, contents, link targets, hard links,
// xattrs, and the times of every entry of the tar.
func TestExtractMatchesUmoci(t *testing.T) {
	testutil.RequiresRoot(t)
	apexlog.SetHandler(apexdiscard.Default) // umoci's warnings
	mtime := time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC)
	type entry struct {
		name, link string
		typ        byte
		mode       int64
		uid, gid   int
		data       string
		xattrs     map[string]string
	}
	layers := map[string][]entry{
		"kinds": {
			{name: "./", typ: tar.TypeDir, mode: 0o755},
			{name: "bin/", typ: tar.TypeDir, mode: 0o755},
			{name: "bin/busybox", typ: tar.TypeReg, mode: 0o755, data: "ELF"},
			{name: "bin/sh", typ: tar.TypeSymlink, link: "busybox"},
			{name: "bin/abs", typ: tar.TypeSymlink, link: "/bin/busybox"},
			{name: "bin/su", typ: tar.TypeReg, mode: 0o4755, uid: 0, gid: 0, data: "su"},
			{name: "bin/ash", typ: tar.TypeLink, link: "bin/busybox"},
			{name: "bin/shlink", typ: tar.TypeLink, link: "bin/sh"},
			{name: "home/", typ: tar.TypeDir, mode: 0o755},
			{name: "home/u/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
			{name: "home/u/f", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 100, data: strings.Repeat("x", 100000)},
			{name: "home/u/empty", typ: tar.TypeReg, mode: 0o640, uid: 1000, gid: 1000},
			{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
			{name: "ro/", typ: tar.TypeDir, mode: 0o555},
			{name: "ro/f", typ: tar.TypeReg, mode: 0o444, data: "ro"},
			{name: "fifo", typ: tar.TypeFifo, mode: 0o620, uid: 5, gid: 6},
			{name: "xa", typ: tar.TypeReg, mode: 0o644, data: "x", xattrs: map[string]string{
				"user.note": "hi", "trusted.overlay.opaque": "y", "security.selinux": "system_u:object_r:bin_t:s0",
			}},
			{name: "xd/", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"user.d": "dir"}},
		},
		"whiteouts": {
			{name: "a/", typ: tar.TypeDir, mode: 0o755},
			{name: "a/.wh.gone", typ: tar.TypeReg},
			{name: "a/keep", typ: tar.TypeReg, mode: 0o644, data: "k"},
			{name: ".wh.top", typ: tar.TypeReg},
			{name: "o/", typ: tar.TypeDir, mode: 0o750},
			{name: "o/.wh.early", typ: tar.TypeReg},
			{name: "o/.wh..wh..opq", typ: tar.TypeReg},
			{name: "o/.wh.late", typ: tar.TypeReg},
			{name: "o/new", typ: tar.TypeReg, mode: 0o644, data: "n"},
			{name: "p/.wh..wh..opq", typ: tar.TypeReg},
		},
		"replacements": {
			{name: "f", typ: tar.TypeReg, mode: 0o644, data: "one"},
			{name: "f", typ: tar.TypeReg, mode: 0o600, data: "two"},
			{name: "d/", typ: tar.TypeDir, mode: 0o755},
			{name: "d/x", typ: tar.TypeReg, mode: 0o644, data: "x"},
			{name: "d", typ: tar.TypeReg, mode: 0o644, data: "now a file"},
			{name: "e", typ: tar.TypeReg, mode: 0o644, data: "file"},
			{name: "e/", typ: tar.TypeDir, mode: 0o711},
			{name: "e/y", typ: tar.TypeReg, mode: 0o644, data: "y"},
			{name: "s", typ: tar.TypeSymlink, link: "f"},
			{name: "s/", typ: tar.TypeDir, mode: 0o755},
			{name: "g/", typ: tar.TypeDir, mode: 0o700},
			{name: "g/", typ: tar.TypeDir, mode: 0o755, uid: 7},
			// umoci leaves the time of a directory in which it made a
			// directory no entry names (here the tree) as it is then.
			{name: "implicit/deep/file", typ: tar.TypeReg, mode: 0o644, data: "deep"},
		},
	}
	var busybox []byte
	if _, err := os.Stat("/bin/busybox"); err == nil {
		img, err := imagebuild.BusyboxHTTPD("/bin/busybox", imagebuild.DefaultName)
		if err != nil {
			t.Fatal(err)
		}
		busybox = img.Layers[0]
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range layers {
			if !yield(n) {
				return
			}
		}
	})
	if busybox != nil {
		names = append(names, "busybox")
	}
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			b := busybox
			if n != "busybox" {
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				for _, e := range layers[n] {
					hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode,
						Uid: e.uid, Gid: e.gid, Size: int64(len(e.data)), ModTime: mtime, Format: tar.FormatPAX}
					for k, v := range e.xattrs {
						if hdr.PAXRecords == nil {
							hdr.PAXRecords = map[string]string{}
						}
						hdr.PAXRecords["SCHILY.xattr."+k] = v
					}
					if e.typ != tar.TypeReg {
						hdr.Size = 0
					}
					if err := tw.WriteHeader(hdr); err != nil {
						t.Fatal(err)
					}
					if _, err := io.WriteString(tw, e.data); err != nil {
						t.Fatal(err)
					}
				}
				if err := tw.Close(); err != nil {
					t.Fatal(err)
				}
				b = buf.Bytes()
			}
			ours, theirs := filepath.Join(t.TempDir(), "root"), filepath.Join(t.TempDir(), "root")
			for _, d := range []string{ours, theirs} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := unpackTar(context.Background(), ours, bytes.NewReader(b)); err != nil {
				t.Fatalf("pirun: %v", err)
			}
			if err := umociUnpack(theirs, b); err != nil {
				t.Fatalf("umoci: %v", err)
			}
			timed := map[string]bool{}
			tr := tar.NewReader(bytes.NewReader(b))
			for {
				hdr, err := tr.Next()
				if err != nil {
					break
				}
				timed[cleanName(hdr.Name)] = !strings.HasPrefix(filepath.Base(hdr.Name), whiteoutPrefix)
			}
			got, want := describeTree(t, ours, timed), describeTree(t, theirs, timed)
			for _, p := range slices.Sorted(func(yield func(string) bool) {
				for p := range want {
					yield(p)
				}
				for p := range got {
					if _, ok := want[p]; !ok {
						yield(p)
					}
				}
			}) {
				if got[p] != want[p] {
					t.Errorf("%s:\n pirun %s\n umoci %s", p, got[p], want[p])
				}
			}
		})
	}
}

func umociUnpack(tree string, b []byte) error {
	te := layer.NewTarExtractor(&layer.UnpackOptions{OnDiskFormat: layer.OverlayfsRootfs{}})
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := te.UnpackEntry(tree, hdr, tr); err != nil {
			return err
		}
	}
}

// describeTree describes each path of tree in one line; times only for
// the paths timed holds true.
func describeTree(t *testing.T, tree string, timed map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		rel = cleanName(rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mode := st.Mode
		if mode&unix.S_IFMT == unix.S_IFCHR {
			// A whiteout: umoci makes it 0644, pirun 0 like Docker and
			// containerd; overlayfs looks at neither.
			mode &^= 0o7777
		}
		s := fmt.Sprintf("mode %o uid %d gid %d nlink %d", mode, st.Uid, st.Gid, st.Nlink)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s += fmt.Sprintf(" size %d sha256 %x", st.Size, sha256.Sum256(data))
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			s += " -> " + l
		case unix.S_IFCHR:
			s += fmt.Sprintf(" rdev %d", st.Rdev)
		}
		if timed[rel] {
			s += fmt.Sprintf(" mtime %d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		buf := make([]byte, 4096)
		if n, err := unix.Llistxattr(p, buf); err == nil && n > 0 {
			attrs := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			slices.Sort(attrs)
			for _, a := range attrs {
				v := make([]byte, 4096)
				m, _ := unix.Lgetxattr(p, a, v)
				s += fmt.Sprintf(" %s=%q", a, v[:max(m, 0)])
			}
		}
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
