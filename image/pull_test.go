package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ocilayout "github.com/containers/image/v5/oci/layout"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/internal/registrytest"
	"github.com/pirun/pirun/internal/testutil"
)

// testCtx bounds every registry test: no request loop outlives it.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// pushImage writes img as an OCI layout and pushes it as name.
func pushImage(t *testing.T, reg *registrytest.Registry, name string, img imagebuild.Image) digest.Digest {
	t.Helper()
	ref, err := ocilayout.ParseReference(writeLayout(t, img))
	if err != nil {
		t.Fatal(err)
	}
	return reg.Push(t, ref, name)
}

func busyboxImage(t *testing.T) imagebuild.Image {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipping: /bin/busybox is missing (apt-get install busybox-static)")
	}
	img, err := imagebuild.BusyboxHTTPD("/bin/busybox", imagebuild.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPullRegistry(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	pushed := pushImage(t, reg, "hypriot/rpi-busybox-httpd:latest", busyboxImage(t))
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("hypriot/rpi-busybox-httpd") // no tag: :latest
	full := ref + ":latest"

	// Plain HTTP is refused unless configured or asked for.
	if _, err := s.Pull(ctx, ref); err == nil {
		t.Fatal("pull from a plain-HTTP registry without --tls-verify=false succeeded")
	} else {
		t.Log(err)
	}

	var events []Progress
	img, err := s.Pull(ctx, ref, WithTLSVerify(false), WithProgress(func(p Progress) { events = append(events, p) }))
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != full || img.SourceDigest != pushed || img.Digest != pushed {
		t.Errorf("pulled %s %s (source %s), want %s %s", img.Name, img.Digest, img.SourceDigest, full, pushed)
	}
	if !slices.Equal(img.Config.Cmd, []string{"httpd", "-f", "-p", "80", "-h", "/www"}) {
		t.Errorf("Cmd = %q", img.Config.Cmd)
	}
	if _, err := s.RootfsMount(img); err != nil {
		t.Error(err)
	}
	if !slices.ContainsFunc(events, func(p Progress) bool { return p.Event == ProgressDone }) {
		t.Errorf("no ProgressDone among %d progress events", len(events))
	}
	gets := reg.BlobGets()
	if len(gets) != 2 { // the layer and the config
		t.Errorf("first pull: %d blob GETs %v, want 2", len(gets), gets)
	}

	// Pulling again, by tag, by docker://, by digest, under another name:
	// no blob is transferred.
	for _, r := range []string{ref, "docker://" + full, ref + "@" + pushed.String()} {
		again, err := s.Pull(ctx, r, WithTLSVerify(false))
		if err != nil {
			t.Fatalf("pull %s again: %v", r, err)
		}
		if again.Digest != img.Digest {
			t.Errorf("pull %s: digest %s, want %s", r, again.Digest, img.Digest)
		}
	}
	if got := reg.BlobGets(); len(got) != len(gets) {
		t.Errorf("pulling the same image again fetched blobs: %v", got[len(gets):])
	}
	if _, err := s.Lookup(ctx, ref+"@"+pushed.String()); err != nil {
		t.Errorf("the image pulled by digest is not stored under NAME@DIGEST: %v", err)
	}

	// PullMissing asks nothing of the registry when the name is held.
	reg2Log := len(reg.Log())
	if _, err := s.Pull(ctx, ref, WithPullPolicy(PullMissing)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(reg.Log()[reg2Log:], "GET /v2/") {
		t.Errorf("PullMissing contacted the registry: %s", reg.Log()[reg2Log:])
	}

	// The store's registries.conf marks the registry insecure: plain HTTP
	// without the flag.
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.Addr)
	if err := os.WriteFile(filepath.Join(s.Root(), "registries.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, ref); err != nil {
		t.Errorf("pull from a registry marked insecure in registries.conf: %v", err)
	}
	assertNoTemp(t, s)
}

// TestPullConcurrent pulls the same image from two stores on one root at
// once (two pirun processes): both succeed, each blob is fetched once.
func TestPullConcurrent(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	pushImage(t, reg, "web:1", busyboxImage(t))
	root := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			s, err := Open(root)
			if err == nil {
				_, err = s.Pull(ctx, reg.Ref("web:1"), WithTLSVerify(false))
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if gets := reg.BlobGets(); len(gets) != 2 {
		t.Errorf("%d blob GETs %v, want 2", len(gets), gets)
	}
}

// multiArchLayout writes an OCI layout whose index.json names one image
// index holding one image per platform; each image's /arch says which.
func multiArchLayout(t *testing.T, platforms ...ispec.Platform) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "multi")
	var descs []ispec.Descriptor
	for i, p := range platforms {
		one := writeLayout(t, imagebuild.Image{
			Platform: p,
			Config:   ispec.ImageConfig{Cmd: []string{"/arch"}},
			Layers:   [][]byte{mustTar(t, imagebuild.File{Name: "arch", Type: tar.TypeReg, Mode: 0o644, Data: []byte(FormatPlatform(p))})},
		})
		var idx ispec.Index
		readJSON(t, filepath.Join(one, "index.json"), &idx)
		d := idx.Manifests[0]
		d.Platform = &platforms[i]
		descs = append(descs, d)
		if i == 0 {
			if err := os.Rename(one, dir); err != nil {
				t.Fatal(err)
			}
			continue
		}
		blobs, _ := filepath.Glob(filepath.Join(one, "blobs/sha256/*"))
		for _, b := range blobs {
			if err := os.Rename(b, filepath.Join(dir, "blobs/sha256", filepath.Base(b))); err != nil {
				t.Fatal(err)
			}
		}
	}
	inner := ispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageIndex, Manifests: descs}
	b, _ := json.Marshal(inner)
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(dir, "blobs/sha256", d.Encoded()), b, 0o644); err != nil {
		t.Fatal(err)
	}
	top := ispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageIndex,
		Manifests: []ispec.Descriptor{{MediaType: ispec.MediaTypeImageIndex, Digest: d, Size: int64(len(b))}}}
	b, _ = json.Marshal(top)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

var testPlatforms = []ispec.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm", Variant: "v7"},
	{OS: "linux", Architecture: "arm64"},
}

func TestPullMultiArch(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	layout := multiArchLayout(t, testPlatforms...)
	ref, err := ocilayout.ParseReference(layout)
	if err != nil {
		t.Fatal(err)
	}
	indexDigest := reg.Push(t, ref, "multi:latest")
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	archOf := func(img *Image) string {
		b, err := os.ReadFile(filepath.Join(s.layerDir(img.ChainIDs[0]), layerTreeName, "arch"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	host := HostPlatform()
	img, err := s.Pull(ctx, reg.Ref("multi"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if got := archOf(img); got != FormatPlatform(host) || img.Platform.Architecture != host.Architecture {
		t.Errorf("pulled %s (platform %+v), want the host's %s", got, img.Platform, FormatPlatform(host))
	}
	if img.SourceDigest == indexDigest {
		t.Errorf("SourceDigest is the index's, want the instance's")
	}
	for _, p := range testPlatforms {
		img, err := s.Pull(ctx, reg.Ref("multi"), WithTLSVerify(false), WithPlatform(p), WithName("multi:"+p.Architecture))
		if err != nil {
			t.Fatalf("--platform %s: %v", FormatPlatform(p), err)
		}
		if got := archOf(img); got != FormatPlatform(p) {
			t.Errorf("--platform %s pulled %s", FormatPlatform(p), got)
		}
	}
	// Also from an OCI layout holding the index.
	if img, err := s.Pull(ctx, "oci:"+layout, WithName("fromlayout"), WithPlatform(testPlatforms[1])); err != nil || archOf(img) != "linux/arm/v7" {
		t.Errorf("oci: with --platform linux/arm/v7: %v", err)
	}

	_, err = s.Pull(ctx, reg.Ref("multi"), WithTLSVerify(false), WithPlatform(ispec.Platform{OS: "linux", Architecture: "s390x"}), WithName("none"))
	if !errors.Is(err, ErrPlatform) || !strings.Contains(err.Error(), "linux/amd64, linux/arm/v7, linux/arm64") || !strings.Contains(err.Error(), "linux/s390x") {
		t.Errorf("no matching platform: error = %v, want ErrPlatform listing the platforms", err)
	}
	t.Log(err)
	if _, err := s.Lookup(ctx, "none"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an image was recorded after a failed pull: %v", err)
	}
}

// TestPullLayers pulls an image of several layers with a whiteout and an
// opaque directory, and checks the overlay it makes; a second image
// sharing the bottom layer re-uses its blob and its directory.
func TestPullLayers(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	reg2 := func(n string) []byte {
		return mustTar(t, imagebuild.File{Name: n, Type: tar.TypeReg, Mode: 0o644, Data: []byte(n)})
	}
	base := mustTar(t,
		imagebuild.File{Name: "a", Type: tar.TypeDir, Mode: 0o755},
		imagebuild.File{Name: "a/keep", Type: tar.TypeReg, Mode: 0o644, Data: []byte("keep")},
		imagebuild.File{Name: "a/gone", Type: tar.TypeReg, Mode: 0o644, Data: []byte("gone")},
		imagebuild.File{Name: "d", Type: tar.TypeDir, Mode: 0o755},
		imagebuild.File{Name: "d/old", Type: tar.TypeReg, Mode: 0o644, Data: []byte("old")},
	)
	whiteouts := mustTar(t,
		imagebuild.File{Name: "a", Type: tar.TypeDir, Mode: 0o755},
		imagebuild.File{Name: "a/.wh.gone", Type: tar.TypeReg, Mode: 0o644},
		imagebuild.File{Name: "d", Type: tar.TypeDir, Mode: 0o755},
		imagebuild.File{Name: "d/.wh..wh..opq", Type: tar.TypeReg, Mode: 0o644},
		imagebuild.File{Name: "d/new", Type: tar.TypeReg, Mode: 0o644, Data: []byte("new")},
	)
	pushImage(t, reg, "layers:1", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{base, whiteouts, reg2("top")}})
	pushImage(t, reg, "layers:2", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{base, reg2("other")}})
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Pull(ctx, reg.Ref("layers:1"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if len(img.ChainIDs) != 3 {
		t.Fatalf("%d layers, want 3", len(img.ChainIDs))
	}
	l2 := filepath.Join(s.layerDir(img.ChainIDs[1]), layerTreeName)
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(l2, "a/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout a/gone is not a 0:0 character device (%v, mode %o)", err, st.Mode)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(l2, "d"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("d: trusted.overlay.opaque = %q, %v; want y", buf[:n], err)
	}

	// The overlay shows what the image means.
	m, err := s.RootfsMount(img)
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	if err := unix.Mount(m.Source, mnt, m.Type, unix.MS_RDONLY, strings.Join(m.Options, ",")); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	for f, want := range map[string]bool{"a/keep": true, "a/gone": false, "d/old": false, "d/new": true, "top": true} {
		_, err := os.Lstat(filepath.Join(mnt, f))
		if (err == nil) != want {
			t.Errorf("%s: present = %v, want %v", f, err == nil, want)
		}
	}

	gets := len(reg.BlobGets())
	img2, err := s.Pull(ctx, reg.Ref("layers:2"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if img2.ChainIDs[0] != img.ChainIDs[0] {
		t.Errorf("shared bottom layer: chain IDs differ")
	}
	if n := len(reg.BlobGets()) - gets; n != 2 { // its config and its top layer
		t.Errorf("second image fetched %d blobs, want 2 (the shared layer is held)", n)
	}

	// The same blob on another parent is another layer: downloaded again
	// (the store keeps no layer blob) and unpacked under its own chain ID.
	pushImage(t, reg, "layers:3", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{reg2("under"), base}})
	gets = len(reg.BlobGets())
	img3, err := s.Pull(ctx, reg.Ref("layers:3"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(reg.BlobGets()) - gets; n != 3 {
		t.Errorf("third image fetched %d blobs, want 3 (config and both layers)", n)
	}
	if img3.ChainIDs[1] == img.ChainIDs[0] {
		t.Errorf("layers:3: the base layer on another parent has the same chain ID")
	}
	for i, f := range []string{"under", "a/keep"} {
		if _, err := os.Lstat(filepath.Join(s.layerDir(img3.ChainIDs[i]), layerTreeName, f)); err != nil {
			t.Errorf("layers:3: layer %d: %v", i, err)
		}
	}

	// Only manifests and configs are kept as blobs: 3 of each.
	blobs, err := os.ReadDir(s.path(ociDirName, "blobs", "sha256"))
	if err != nil || len(blobs) != 6 {
		t.Errorf("oci/blobs/sha256 holds %d blobs (%v), want 6: 3 manifests and 3 configs, no layer", len(blobs), err)
	}
	assertNoTemp(t, s)
}

// TestPullOldStoreBlob pulls into a store written before layer blobs were
// dropped: a layer blob found in oci/ is unpacked from there, not
// downloaded again.
func TestPullOldStoreBlob(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	layer := mustTar(t, imagebuild.File{Name: "old", Type: tar.TypeReg, Mode: 0o644, Data: []byte("kept as a blob")})
	pushed := pushImage(t, reg, "old:1", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{layer}})
	var mf ispec.Manifest
	readJSON(t, reg.BlobPath(pushed), &mf)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// What an older pirun left: the blob in oci/, no layer directory.
	blob, err := os.ReadFile(reg.BlobPath(mf.Layers[0].Digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(s.blobPath(mf.Layers[0].Digest)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.blobPath(mf.Layers[0].Digest), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := s.Pull(ctx, reg.Ref("old:1"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(s.layerDir(img.ChainIDs[0]), layerTreeName, "old")); err != nil || string(got) != "kept as a blob" {
		t.Errorf("layer unpacked from the old blob: %q, %v", got, err)
	}
	for _, d := range reg.BlobGets() {
		if d == mf.Layers[0].Digest.String() {
			t.Errorf("the layer blob held in oci/ was downloaded again")
		}
	}
	// Prune drops the old blob, not the layer unpacked from it.
	if rep, err := s.Prune(ctx); err != nil || rep.Blobs != 1 || rep.Layers != 0 {
		t.Errorf("prune of the old layer blob: %+v, %v; want 1 blob, 0 layers", rep, err)
	}
	if _, err := os.Stat(s.blobPath(mf.Layers[0].Digest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old layer blob is still there: %v", err)
	}
	if _, err := s.RootfsMount(img); err != nil {
		t.Errorf("the image lost its layer to prune: %v", err)
	}
	assertNoTemp(t, s)
}

// assertNothingPulled checks a failed pull left no image, no unpacked
// layer and no temp file.
func assertNothingPulled(t *testing.T, s *Store) {
	t.Helper()
	if imgs, _ := s.List(context.Background()); len(imgs) != 0 {
		t.Errorf("images after a failed pull: %v", imgs)
	}
	if entries, _ := os.ReadDir(s.path(layersDirName)); len(entries) != 0 {
		t.Errorf("layers/ holds %v after a failed pull", entries)
	}
	assertNoTemp(t, s)
	if entries, _ := os.ReadDir(s.path(ociDirName)); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), "oci-put-blob") }) {
		t.Errorf("oci/ holds a partial blob: %v", entries)
	}
}

func TestPullHostileLayers(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	escaped := "pirun-test-escaped"
	for _, tc := range []struct {
		name  string
		files []imagebuild.File
		want  string
	}{
		{"dotdot", []imagebuild.File{{Name: "../" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")}}, "escapes"},
		{"absolute", []imagebuild.File{{Name: "/tmp/" + escaped, Type: tar.TypeReg, Mode: 0o644}}, "absolute"},
		{"symlink", []imagebuild.File{
			{Name: "x", Type: tar.TypeSymlink, Linkname: "/tmp"},
			{Name: "x/" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "symlink x"},
		{"relative symlink", []imagebuild.File{
			{Name: "x", Type: tar.TypeSymlink, Linkname: "../../../../../../../../tmp"},
			{Name: "x/" + escaped, Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "symlink x"},
		{"hardlink", []imagebuild.File{
			{Name: "h", Type: tar.TypeLink, Linkname: "../../../../../../../../tmp/" + escaped},
			{Name: "h", Type: tar.TypeReg, Mode: 0o644, Data: []byte("evil")},
		}, "escapes"},
		{"hardlink through symlink", []imagebuild.File{
			{Name: "x", Type: tar.TypeSymlink, Linkname: "/etc"},
			{Name: "h", Type: tar.TypeLink, Linkname: "x/passwd"},
		}, "symlink x"},
		{"char device", []imagebuild.File{{Name: "mem", Type: tar.TypeChar, Mode: 0o600}}, "device"},
		{"block device", []imagebuild.File{{Name: "sda", Type: tar.TypeBlock, Mode: 0o600}}, "device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "evil/" + strings.ReplaceAll(tc.name, " ", "-") + ":1"
			pushImage(t, reg, name, imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{mustTar(t, tc.files...)}})
			parent := t.TempDir()
			s, err := Open(filepath.Join(parent, "store"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Pull(ctx, reg.Ref(name), WithTLSVerify(false))
			if !errors.Is(err, ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want ErrInvalidLayer mentioning %q", err, tc.want)
			}
			t.Log(err)
			for _, p := range []string{"/tmp/" + escaped, filepath.Join(parent, escaped), filepath.Join(s.Root(), escaped), filepath.Join(s.Root(), "layers", escaped)} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
					_ = os.Remove(p)
				}
			}
			assertNothingPulled(t, s)
		})
	}
}

// TestPullBroken: a registry serving broken content, or going away, fails
// the pull with a clear error and leaves nothing; the next pull of a good
// image works.
func TestPullBroken(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	bigLayer := mustTar(t, imagebuild.File{Name: "big", Type: tar.TypeReg, Mode: 0o644, Data: randomBytes(4 << 20)})
	img := imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{bigLayer}}
	pushed := pushImage(t, reg, "broken:1", img)
	var mf ispec.Manifest
	readJSON(t, reg.BlobPath(pushed), &mf)
	layer := mf.Layers[0].Digest
	good, err := os.ReadFile(reg.BlobPath(layer))
	if err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := os.WriteFile(reg.BlobPath(layer), good, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name  string
		setup func() (ref string)
	}{
		{"digest mismatch", func() string {
			bad := slices.Clone(good)
			bad[len(bad)/2] ^= 0xff
			if err := os.WriteFile(reg.BlobPath(layer), bad, 0o644); err != nil {
				t.Fatal(err)
			}
			return reg.Ref("broken:1")
		}},
		{"truncated blob", func() string {
			if err := os.WriteFile(reg.BlobPath(layer), good[:len(good)/2], 0o644); err != nil {
				t.Fatal(err)
			}
			return reg.Ref("broken:1")
		}},
		{"unknown manifest media type", func() string {
			addr, _ := reg.Proxy(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/manifests/") {
						w = &typeRewriter{ResponseWriter: w, typ: "application/vnd.example.unknown+json"}
					}
					next.ServeHTTP(w, r)
				})
			})
			return addr + "/broken:1"
		}},
		{"registry goes away mid-pull", func() string {
			var stop func()
			var addr string
			addr, stop = reg.Proxy(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/blobs/"+layer.String()) && r.Method == http.MethodGet {
						w = &cutWriter{ResponseWriter: w, left: len(good) / 3, cut: stop}
					}
					next.ServeHTTP(w, r)
				})
			})
			return addr + "/broken:1"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ref := tc.setup()
			defer restore()
			_, err = s.Pull(ctx, ref, WithTLSVerify(false), WithName("broken:1"))
			if err == nil {
				t.Fatal("the pull succeeded")
			}
			t.Log(err)
			assertNothingPulled(t, s)
			restore()
			// The next pull from the healthy registry redoes it cleanly.
			if _, err := s.Pull(ctx, reg.Ref("broken:1"), WithTLSVerify(false)); err != nil {
				t.Fatalf("pull after the failure: %v", err)
			}
			assertNoTemp(t, s)
		})
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	var x uint64 = 88172645463325252
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

type typeRewriter struct {
	http.ResponseWriter
	typ string
}

func (w *typeRewriter) WriteHeader(code int) {
	if w.Header().Get("Content-Type") != "" {
		w.Header().Set("Content-Type", w.typ)
	}
	w.ResponseWriter.WriteHeader(code)
}

// cutWriter passes left bytes, then closes the registry's proxy at once.
type cutWriter struct {
	http.ResponseWriter
	left int
	cut  func()
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		_, _ = w.ResponseWriter.Write(p[:w.left])
		w.left = 0
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		go w.cut()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	w.left -= len(p)
	return w.ResponseWriter.Write(p)
}

var _ io.Writer = (*cutWriter)(nil)

func TestRemovePrune(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := testCtx(t)
	reg := registrytest.Start(t)
	file := func(n string) []byte {
		return mustTar(t, imagebuild.File{Name: n, Type: tar.TypeReg, Mode: 0o644, Data: []byte(n)})
	}
	pushImage(t, reg, "p:1", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{file("base"), file("one")}})
	pushImage(t, reg, "p:2", imagebuild.Image{Platform: HostPlatform(), Layers: [][]byte{file("base"), file("two")}})
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	one, err := s.Pull(ctx, reg.Ref("p:1"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	two, err := s.Pull(ctx, reg.Ref("p:2"), WithTLSVerify(false))
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Prune(ctx); err != nil || rep.Blobs != 0 || rep.Layers != 0 {
		t.Errorf("prune with every image recorded: %+v, %v", rep, err)
	}
	if _, err := s.Remove(ctx, "nothere"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove(nothere) = %v, want ErrNotFound", err)
	}
	if _, err := s.Remove(ctx, reg.Ref("p:1")); err != nil {
		t.Fatal(err)
	}
	// Kept for a container still running it.
	if rep, err := s.Prune(ctx, WithKeep(one.Digest)); err != nil || rep.Blobs != 0 || rep.Layers != 0 {
		t.Errorf("prune keeping p:1: %+v, %v", rep, err)
	}
	rep, err := s.Prune(ctx)
	if err != nil || rep.Blobs != 2 || rep.Layers != 1 { // manifest and config (no layer blob is kept), layer "one"
		t.Errorf("prune = %+v, %v; want 2 blobs and 1 layer", rep, err)
	}
	if rep.Bytes < 2048 { // the layer's tar alone: a header, a block of data, the end
		t.Errorf("prune freed %d bytes, want the layer's 2048 and the blobs'", rep.Bytes)
	}
	if _, err := s.RootfsMount(two); err != nil {
		t.Errorf("p:2 lost a layer to prune: %v", err)
	}
	if _, err := os.Stat(s.layerDir(one.ChainIDs[1])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the layer of p:1 only is still there: %v", err)
	}
	if _, err := s.Pull(ctx, reg.Ref("p:1"), WithTLSVerify(false)); err != nil {
		t.Errorf("pull after prune: %v", err)
	}
	assertNoTemp(t, s)
}
