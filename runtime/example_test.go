package runtime_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

// Three web servers from the default image: import it, spawn them, fetch a
// page from each, remove them. (Run as root. A program that starts
// containers calls runtime.Init first thing in main when runtime.IsInit.)
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pirun-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	// The default image as an OCI archive, as `make image` writes it.
	archive := filepath.Join(dir, "rpi-busybox-httpd.tar")
	img, err := imagebuild.BusyboxHTTPD("/bin/busybox", imagebuild.DefaultName)
	if err == nil {
		err = imagebuild.WriteArchive(ctx, archive, img)
	}
	if err != nil {
		fmt.Println(err)
		return
	}

	images, err := image.Open(filepath.Join(dir, "images"))
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := images.Import(ctx, "oci-archive:"+archive); err != nil {
		fmt.Println(err)
		return
	}
	rt, err := runtime.New(filepath.Join(dir, "state"), images, runtime.WithNetworkOptions(
		network.WithBridgeName("pirun-example"), network.WithSubnet(netip.MustParsePrefix("10.127.0.0/24"))))
	if err != nil {
		fmt.Println(err)
		return
	}
	cs, err := rt.Spawn(ctx, runtime.Config{Image: "rpi-busybox-httpd", Name: "web"}, 3, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	defer rt.Remove(ctx, ids, true)

	client := &http.Client{Timeout: 5 * time.Second}
	for _, c := range cs {
		resp, err := client.Get("http://" + c.IP + "/")
		if err != nil {
			fmt.Println(c.Name, err)
			continue
		}
		resp.Body.Close()
		fmt.Println(c.Name, resp.Status)
	}
	// Output:
	// web-1 200 OK
	// web-2 200 OK
	// web-3 200 OK
}
