package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ociarchive "github.com/containers/image/v5/oci/archive"
	ocilayout "github.com/containers/image/v5/oci/layout"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/imagebuild"
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

// TestCLIPullProgress pulls on a terminal: one bar per blob, each drawn
// complete at the end, on a 100x40 pty; plain lines on a pty nobody gave a
// size (script(1), some serial consoles), where bars would draw nothing.
func TestCLIPullProgress(t *testing.T) {
	testutil.RequiresRoot(t)
	reg := registrytest.Start(t)
	layer, err := imagebuild.Tar([]imagebuild.File{{Name: "data", Type: tar.TypeReg, Mode: 0o644, Data: bytes.Repeat([]byte("pirun\n"), 1<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := imagebuild.WriteLayout(context.Background(), dir, imagebuild.Image{Platform: imagebuild.HostPlatform(), Layers: [][]byte{layer}}); err != nil {
		t.Fatal(err)
	}
	src, err := ocilayout.ParseReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, src, "progress:1")
	ref := reg.Ref("progress:1")

	for _, tc := range []struct {
		cols, rows uint16
		want       string // once per blob: the layer and the config
	}{
		{100, 40, "] done"},
		{0, 0, "Copied blob sha256:"},
	} {
		c := newCLI(t)
		out := onPty(t, c.cmd("pull", "--tls-verify=false", ref), tc.cols, tc.rows)
		// A bar is redrawn in every frame; the last frame shows all blobs.
		last := out[max(strings.LastIndex(out, "\x1b[J"), 0):]
		if n := strings.Count(last, tc.want); n != 2 {
			t.Errorf("%dx%d terminal: %d×%q at the end, want 2 (layer and config):\n%q", tc.cols, tc.rows, n, tc.want, out)
		}
	}
}

// onPty runs cmd with its stderr on a new pty of the given size and
// returns what the pty showed. cmd is killed after a minute (a hung
// progress display fails the test instead of hanging it).
func onPty(t *testing.T, cmd *exec.Cmd, cols, rows uint16) string {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: no pty: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows}); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, pts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	var shown bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&shown, master) // ends with EIO once the pts is closed
	}()
	kill := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
	err = cmd.Wait()
	kill.Stop()
	<-read
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(cmd.Args, " "), err, stdout.String(), shown.String())
	}
	return shown.String()
}
