package testutil

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pirun/pirun/internal/imagebuild"
)

// DefaultImageArchive writes pirun's default image (rpi-busybox-httpd:latest,
// from Debian's static busybox) as an OCI archive into a directory of t and
// returns its path. It skips t when /bin/busybox is missing.
func DefaultImageArchive(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipping: /bin/busybox missing (Debian package busybox-static; make deps installs it)")
	}
	img, err := imagebuild.BusyboxHTTPD("/bin/busybox", imagebuild.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rpi-busybox-httpd.tar")
	if err := imagebuild.WriteArchive(context.Background(), p, img); err != nil {
		t.Fatal(err)
	}
	return p
}
