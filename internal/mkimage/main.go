// Command mkimage writes pirun's default image, busybox httpd, as an OCI
// archive for the host architecture:
//
//	go run ./internal/mkimage -busybox /bin/busybox -o build/rpi-busybox-httpd.tar -name rpi-busybox-httpd:latest
//
// Then: pirun image import oci-archive:build/rpi-busybox-httpd.tar
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pirun/pirun/internal/imagebuild"
)

func main() {
	busybox := flag.String("busybox", "/bin/busybox", "static busybox binary to put in the image (Debian: busybox-static)")
	out := flag.String("o", "build/rpi-busybox-httpd.tar", "OCI archive to write")
	name := flag.String("name", imagebuild.DefaultName, "image name, written as the org.opencontainers.image.ref.name annotation (normalized)")
	flag.Parse()
	if err := run(context.Background(), *busybox, *out, *name); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, busybox, out, name string) error {
	img, err := imagebuild.BusyboxHTTPD(busybox, name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := imagebuild.WriteArchive(ctx, out, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	fmt.Printf("wrote %s (%s, %s/%s)\n", out, img.Name, img.Platform.OS, img.Platform.Architecture)
	return nil
}
