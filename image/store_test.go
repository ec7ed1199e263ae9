package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func TestOpen(t *testing.T) {
	if _, err := Open(""); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "a:b")); err == nil {
		t.Fatal("Open of a root with ':' succeeded")
	}
	root := filepath.Join(t.TempDir(), "store")
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if s.Root() != root {
		t.Errorf("Root() = %q, want %q", s.Root(), root)
	}
	for _, d := range []string{"", "oci", "layers", "empty", "tmp"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s/%s: not a directory (%v)", root, d, err)
		}
	}
	if fi, _ := os.Stat(root); fi.Mode().Perm() != 0o700 {
		t.Errorf("root mode %v, want 0700", fi.Mode().Perm())
	}
	if _, err := Open(root); err != nil {
		t.Fatalf("reopen: %v", err)
	}
}

func fakeImage(name string, n byte) Image {
	return Image{
		Name:     name,
		Digest:   digest.Digest("sha256:" + strings.Repeat(string('a'+n), 64)),
		ID:       digest.Digest("sha256:" + strings.Repeat("0", 60) + strings.Repeat(string('0'+n), 4)),
		ChainIDs: []digest.Digest{digest.FromString(name)},
	}
}

func TestLookup(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("List on an empty store = %v, %v", imgs, err)
	}
	web := fakeImage("docker.io/library/web:latest", 1)
	web2 := fakeImage("docker.io/library/web:2", 2)
	alias := fakeImage("ghcr.io/x/web:latest", 1) // same image as web, another name
	if err := s.save(map[string]Image{web.Name: web, web2.Name: web2, alias.Name: alias}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		ref, want string
	}{
		{"web", web.Name},
		{"web:latest", web.Name},
		{"docker.io/library/web:latest", web.Name},
		{"web:2", web2.Name},
		{"ghcr.io/x/web", alias.Name},
		{web2.Digest.String(), web2.Name},
		{web2.ID.String(), web2.Name},
		{web2.ID.Encoded(), web2.Name},
		{web2.ID.Encoded()[:60] + "22", web2.Name}, // 62 hex digits
		{web.ID.Encoded()[:61] + "111", web.Name},  // one image under two names: the first name wins
	} {
		img, err := s.Lookup(ctx, tc.ref)
		if err != nil {
			t.Errorf("Lookup(%q): %v", tc.ref, err)
			continue
		}
		if img.Name != tc.want {
			t.Errorf("Lookup(%q) = %s, want %s", tc.ref, img.Name, tc.want)
		}
	}

	for _, ref := range []string{"nothere", "web:3", "sha256:" + strings.Repeat("f", 64), strings.Repeat("f", 12), strings.Repeat("0", 11)} {
		_, err := s.Lookup(ctx, ref)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%q) error = %v, want ErrNotFound", ref, err)
		}
		if err != nil && !strings.Contains(err.Error(), ref) {
			t.Errorf("Lookup(%q) error %q does not name the reference", ref, err)
		}
	}
	// A prefix shared by two different images is ambiguous.
	if _, err := s.Lookup(ctx, strings.Repeat("0", 12)); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("ambiguous prefix: error = %v, want ErrInvalidRef", err)
	}
	if _, err := s.Lookup(ctx, "Not A Ref"); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("malformed reference: error = %v, want ErrInvalidRef", err)
	}

	imgs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, img := range imgs {
		names = append(names, img.Name)
	}
	if got, want := strings.Join(names, " "), "docker.io/library/web:2 docker.io/library/web:latest ghcr.io/x/web:latest"; got != want {
		t.Errorf("List names = %s, want %s", got, want)
	}
}

func TestRootfsMountMissingLayer(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := fakeImage("docker.io/library/web:latest", 1)
	if _, err := s.RootfsMount(&img); !errors.Is(err, ErrNotFound) {
		t.Errorf("RootfsMount without layer dirs: error = %v, want ErrNotFound", err)
	}
}
