package image

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containers/image/v5/copy"
	dockerarchive "github.com/containers/image/v5/docker/archive"
	"github.com/containers/image/v5/docker/reference"
	ocilayout "github.com/containers/image/v5/oci/layout"
	"github.com/containers/image/v5/signature"
	digest "github.com/opencontainers/go-digest"

	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/internal/testutil"
)

// defaultArchive is the default image (busybox httpd) as an OCI archive,
// and what was built into it.
func defaultArchive(t *testing.T) (string, imagebuild.Image) {
	t.Helper()
	p := testutil.DefaultImageArchive(t)
	img, err := imagebuild.BusyboxHTTPD("/bin/busybox", imagebuild.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	return p, img
}

func TestImportDefaultImage(t *testing.T) {
	testutil.RequiresRoot(t) // unpacking chowns files and creates whiteouts
	ctx := context.Background()
	archive, built := defaultArchive(t)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	img, err := s.Import(ctx, "oci-archive:"+archive)
	if err != nil {
		t.Fatal(err)
	}
	const name = "docker.io/library/rpi-busybox-httpd:latest"
	if img.Name != name {
		t.Errorf("Name = %q, want %q", img.Name, name)
	}
	diffID := digest.FromBytes(built.Layers[0])
	if len(img.ChainIDs) != 1 || img.ChainIDs[0] != diffID {
		t.Errorf("ChainIDs = %v, want [%s]", img.ChainIDs, diffID)
	}
	if !slices.Equal(img.Config.Cmd, []string{"httpd", "-f", "-p", "80", "-h", "/www"}) {
		t.Errorf("Cmd = %q", img.Config.Cmd)
	}
	if _, ok := img.Config.ExposedPorts["80/tcp"]; !ok {
		t.Errorf("ExposedPorts = %v, want 80/tcp", img.Config.ExposedPorts)
	}
	if img.Platform.Architecture != built.Platform.Architecture || img.Platform.OS != "linux" {
		t.Errorf("Platform = %+v", img.Platform)
	}
	if img.Size != int64(len(built.Layers[0])) {
		t.Errorf("Size = %d, want %d", img.Size, len(built.Layers[0]))
	}
	mb, err := os.ReadFile(s.blobPath(img.Digest))
	if err != nil || digest.FromBytes(mb) != img.Digest {
		t.Errorf("manifest blob %s missing or wrong (%v)", img.Digest, err)
	}

	layerDir := s.layerDir(img.ChainIDs[0])
	if len(filepath.Base(layerDir)) != 16 {
		t.Errorf("layer dir %s: want a 16-hex name", layerDir)
	}
	for _, f := range []string{"bin/busybox", "www/index.html", "www/pi.jpg", "etc/passwd"} {
		if _, err := os.Stat(filepath.Join(layerDir, "root", f)); err != nil {
			t.Errorf("layer tree: %v", err)
		}
	}
	if target, err := os.Readlink(filepath.Join(layerDir, "root", "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v; want busybox", target, err)
	}
	meta, err := readLayerMeta(layerDir)
	if err != nil || meta.ChainID != img.ChainIDs[0] {
		t.Errorf("layer.json = %+v, %v", meta, err)
	}

	m, err := s.RootfsMount(img)
	if err != nil {
		t.Fatal(err)
	}
	want := "lowerdir=" + s.Root() + "/empty:" + layerDir + "/root"
	if m.Type != "overlay" || m.Source != "overlay" || len(m.Options) != 1 || m.Options[0] != want {
		t.Errorf("RootfsMount = %+v, want options [%s]", m, want)
	}

	for _, ref := range []string{"rpi-busybox-httpd", name, img.Digest.String(), img.ID.Encoded()[:12]} {
		if got, err := s.Lookup(ctx, ref); err != nil || got.Digest != img.Digest {
			t.Errorf("Lookup(%q) = %v, %v", ref, got, err)
		}
	}

	// A second import re-uses the layer directory.
	fi1, err := os.Stat(layerDir)
	if err != nil {
		t.Fatal(err)
	}
	img2, err := s.Import(ctx, "oci-archive:"+archive, WithName("web:v2"))
	if err != nil {
		t.Fatal(err)
	}
	fi2, err := os.Stat(layerDir)
	if err != nil {
		t.Fatal(err)
	}
	if !fi1.ModTime().Equal(fi2.ModTime()) || !os.SameFile(fi1, fi2) {
		t.Errorf("layer dir rewritten on re-import: mtime %v → %v", fi1.ModTime(), fi2.ModTime())
	}
	if img2.Name != "docker.io/library/web:v2" || img2.Digest != img.Digest {
		t.Errorf("second import = %s %s", img2.Name, img2.Digest)
	}
	imgs, err := s.List(ctx)
	if err != nil || len(imgs) != 2 || imgs[0].Name != name || imgs[1].Name != img2.Name {
		t.Errorf("List = %v, %v", imgs, err)
	}
	assertNoTemp(t, s)
}

// TestImportSources imports the default image from an OCI layout directory
// and from a docker-archive (written with containers/image), and imports
// the same archive concurrently.
func TestImportSources(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	archive, built := defaultArchive(t)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	layout := filepath.Join(t.TempDir(), "layout")
	if err := imagebuild.WriteLayout(ctx, layout, built); err != nil {
		t.Fatal(err)
	}
	img, err := s.Import(ctx, "oci:"+layout)
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "docker.io/library/rpi-busybox-httpd:latest" {
		t.Errorf("oci: Name = %s", img.Name)
	}
	if _, err := s.Import(ctx, "oci:"+layout+":docker.io/library/rpi-busybox-httpd:latest", WithName("byref")); err != nil {
		t.Errorf("oci: with :REF: %v", err)
	}

	// docker-archive, named by its RepoTags.
	dockerTar := filepath.Join(t.TempDir(), "docker.tar")
	src, err := ocilayout.ParseReference(layout)
	if err != nil {
		t.Fatal(err)
	}
	tagged, err := reference.ParseNormalizedNamed("hypriot/rpi-busybox-httpd:1.0")
	if err != nil {
		t.Fatal(err)
	}
	dst, err := dockerarchive.NewReference(dockerTar, tagged.(reference.NamedTagged))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy()
	if _, err := copy.Image(ctx, pc, dst, src, &copy.Options{}); err != nil {
		t.Fatal(err)
	}
	dimg, err := s.Import(ctx, "docker-archive:"+dockerTar)
	if err != nil {
		t.Fatal(err)
	}
	if dimg.Name != "docker.io/hypriot/rpi-busybox-httpd:1.0" {
		t.Errorf("docker-archive: Name = %s", dimg.Name)
	}
	if !slices.Equal(dimg.ChainIDs, img.ChainIDs) {
		t.Errorf("docker-archive: ChainIDs %v, want %v (same layer)", dimg.ChainIDs, img.ChainIDs)
	}

	// Concurrent imports serialize on the lock and all succeed.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = s.Import(ctx, "oci-archive:"+archive, WithName("concurrent"))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("concurrent import: %v", err)
		}
	}
	assertNoTemp(t, s)
}

func TestImportNeedsName(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layout := writeLayout(t, imagebuild.Image{Platform: imagebuild.HostPlatform(), Layers: [][]byte{mustTar(t, imagebuild.File{Name: "a", Type: tar.TypeReg, Mode: 0o644})}})
	_, err = s.Import(ctx, "oci:"+layout)
	if !errors.Is(err, ErrInvalidRef) || !strings.Contains(err.Error(), "WithName") {
		t.Errorf("import without a name: error = %v, want ErrInvalidRef asking for a name", err)
	}
	for _, bad := range []string{"nope:x", "oci", "docker://busybox"} {
		if _, err := s.Import(ctx, bad); !errors.Is(err, ErrInvalidRef) {
			t.Errorf("Import(%q) error = %v, want ErrInvalidRef", bad, err)
		}
	}
	if _, err := s.Import(ctx, "oci:"+layout, WithName("BAD NAME")); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("bad WithName: error = %v, want ErrInvalidRef", err)
	}
}

func TestImportHostileLayer(t *testing.T) {
	testutil.RequiresRoot(t)
	hostEvil := "/etc/pirun-test-evil"
	t.Cleanup(func() { _ = os.Remove(hostEvil) })
	escaped := "pirun-test-escaped"

	for _, tc := range []struct {
		name  string
		files []imagebuild.File
		want  string
	}{
		{"dotdot", []imagebuild.File{
			{Name: "ok", Type: tar.TypeReg, Mode: 0o644},
			{Name: "../" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "escapes"},
		{"deep dotdot", []imagebuild.File{
			{Name: "a/../../../../../../../../../../tmp/" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "escapes"},
		{"absolute", []imagebuild.File{
			{Name: "/tmp/" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "absolute"},
		{"symlink", []imagebuild.File{
			{Name: "x", Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/"},
			{Name: "x/etc/pirun-test-evil", Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "symlink x"},
		{"hardlink", []imagebuild.File{
			{Name: "passwd", Type: tar.TypeLink, Linkname: "../../../../../../../../etc/passwd"},
		}, "escapes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			parent := t.TempDir()
			s, err := Open(filepath.Join(parent, "store"))
			if err != nil {
				t.Fatal(err)
			}
			layout := writeLayout(t, imagebuild.Image{
				Name:     "docker.io/library/evil:latest",
				Platform: imagebuild.HostPlatform(),
				Layers:   [][]byte{mustTar(t, tc.files...)},
			})
			_, err = s.Import(ctx, "oci:"+layout)
			if !errors.Is(err, ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("hostile import: error = %v, want ErrInvalidLayer mentioning %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "layer sha256:") {
				t.Errorf("error %q does not name the layer", err)
			}
			t.Log(err)
			for _, p := range []string{hostEvil, "/tmp/" + escaped, filepath.Join(parent, escaped), filepath.Join(s.Root(), escaped), filepath.Join(s.Root(), "layers", escaped)} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
			if _, err := s.Lookup(ctx, "evil"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Lookup after a failed import: %v, want ErrNotFound", err)
			}
			assertNoTemp(t, s)
			if entries, _ := os.ReadDir(s.path(layersDirName)); len(entries) != 0 {
				t.Errorf("layers/ holds %v after a failed import", entries)
			}
		})
	}
}

func TestImportDiffIDMismatch(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := mustTar(t, imagebuild.File{Name: "a", Type: tar.TypeReg, Mode: 0o644, Data: []byte("a")})
	other := mustTar(t, imagebuild.File{Name: "b", Type: tar.TypeReg, Mode: 0o644, Data: []byte("b")})
	layout := writeLayout(t, imagebuild.Image{
		Name:     "docker.io/library/liar:latest",
		Platform: imagebuild.HostPlatform(),
		// The second layer's content does not match its diff_id.
		Layers:  [][]byte{good, other},
		DiffIDs: []digest.Digest{digest.FromBytes(good), digest.FromBytes(good)},
	})
	_, err = s.Import(ctx, "oci:"+layout)
	if !errors.Is(err, ErrInvalidLayer) || !strings.Contains(err.Error(), "diff_id") {
		t.Fatalf("error = %v, want ErrInvalidLayer about the diff_id", err)
	}
	t.Log(err)
	if imgs, _ := s.List(ctx); len(imgs) != 0 {
		t.Errorf("images after a failed import: %v", imgs)
	}
	// The first layer, unpacked by the failed import, was rolled back too.
	if entries, _ := os.ReadDir(s.path(layersDirName)); len(entries) != 0 {
		t.Errorf("layers/ holds %v after a failed import", entries)
	}
	assertNoTemp(t, s)
}

func writeLayout(t *testing.T, img imagebuild.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layout")
	if err := imagebuild.WriteLayout(context.Background(), p, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustTar(t *testing.T, files ...imagebuild.File) []byte {
	t.Helper()
	b, err := imagebuild.Tar(files)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertNoTemp fails t if an import left temp files in the store.
func assertNoTemp(t *testing.T, s *Store) {
	t.Helper()
	if entries, _ := os.ReadDir(s.path(tmpDirName)); len(entries) != 0 {
		t.Errorf("tmp/ holds %v", entries)
	}
	for _, dir := range []string{s.path(layersDirName), s.Root()} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("%s: temp entry %s left behind", dir, e.Name())
			}
		}
	}
}
