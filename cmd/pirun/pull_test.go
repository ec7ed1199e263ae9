package main

import (
	"encoding/json"
	"strings"
	"testing"

	ociarchive "github.com/containers/image/v5/oci/archive"

	"github.com/pirun/pirun/internal/registrytest"
	"github.com/pirun/pirun/internal/testutil"
)

// TestCLIPullRmiPrune pulls from a local registry, runs a container of the
// image, and checks that rmi refuses while it exists and prune keeps its
// layers after rmi -f.
func TestCLIPullRmiPrune(t *testing.T) {
	c := newCLI(t)
	reg := registrytest.Start(t)
	src, err := ociarchive.ParseReference(testutil.DefaultImageArchive(t))
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, src, "hypriot/rpi-busybox-httpd:latest")
	ref := reg.Ref("hypriot/rpi-busybox-httpd:latest")

	c.fails("HTTP response to HTTPS client", "pull", ref)
	if out := c.ok("pull", "--tls-verify=false", ref); !strings.Contains(out, ref+" sha256:") {
		t.Errorf("pull printed %q", out)
	}
	c.fails("no image for the platform linux/s390x", "pull", "--tls-verify=false", "--platform", "linux/s390x", "--name", "x", ref)
	c.fails("want OS/ARCH", "pull", "--platform", "arm", ref)

	var imgs []struct {
		Name    string `json:"name"`
		Digest  string `json:"digest"`
		Size    int64  `json:"size"`
		Created string `json:"created"`
	}
	if err := json.Unmarshal([]byte(c.ok("images", "--format", "json")), &imgs); err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2 || imgs[0].Name != ref || imgs[0].Size == 0 || imgs[0].Created == "" || !strings.HasPrefix(imgs[0].Digest, "sha256:") {
		t.Errorf("images --format json = %+v", imgs)
	}

	c.ok("run", "-d", "--name", "user", "--network", "none", ref)
	c.fails("image in use by user", "rmi", ref)
	c.ok("rmi", "-f", ref)
	// Its layers are the default image's too; prune removes nothing a
	// recorded image or the container uses.
	c.ok("image", "prune")
	c.ok("rm", "-f", "user")
	c.ok("rmi", "rpi-busybox-httpd")
	if out := c.ok("image", "prune"); !strings.Contains(out, "1 layers") {
		t.Errorf("prune after removing every image: %q, want 1 layer removed", out)
	}
	c.fails("image not found", "rmi", "rpi-busybox-httpd")
}
