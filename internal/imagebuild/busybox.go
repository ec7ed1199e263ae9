package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"os"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultName is the name of pirun's default image.
const DefaultName = "rpi-busybox-httpd:latest"

// busyboxApplets get a symlink in /bin.
var busyboxApplets = []string{
	"cat", "echo", "env", "false", "hostname", "httpd", "id", "ip", "kill",
	"ls", "mkdir", "mount", "nc", "ping", "ps", "rm", "sh", "sleep", "top",
	"touch", "true", "uname", "wget",
}

const indexHTML = `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>pirun</title></head>
<body style="font-family: sans-serif; text-align: center">
<h1>Hello from pirun</h1>
<p>This page is served by busybox httpd in a pirun container.</p>
<img src="pi.jpg" alt="a raspberry" width="192" height="192">
</body>
</html>
`

const passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
const group = "root:x:0:\nnogroup:x:65534:\n"

// BusyboxHTTPD returns pirun's default image: one layer with the static
// busybox at busybox (Debian's busybox-static: /bin/busybox), its applet
// symlinks in /bin, a web page and a picture in /www, and a config that
// runs httpd on port 80. name is normalized to a full reference for the
// index annotation.
func BusyboxHTTPD(busybox, name string) (Image, error) {
	full, err := FullName(name)
	if err != nil {
		return Image{}, err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w: %w", busybox, errNoBusybox, err)
	}
	pic, err := Picture()
	if err != nil {
		return Image{}, err
	}
	files := []File{
		{Name: "bin", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
		{Name: "dev", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/group", Type: tar.TypeReg, Mode: 0o644, Data: []byte(group)},
		{Name: "etc/passwd", Type: tar.TypeReg, Mode: 0o644, Data: []byte(passwd)},
		{Name: "proc", Type: tar.TypeDir, Mode: 0o755},
		{Name: "root", Type: tar.TypeDir, Mode: 0o700},
		{Name: "run", Type: tar.TypeDir, Mode: 0o755},
		{Name: "sys", Type: tar.TypeDir, Mode: 0o755},
		{Name: "tmp", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "var", Type: tar.TypeDir, Mode: 0o755},
		{Name: "www", Type: tar.TypeDir, Mode: 0o755},
		{Name: "www/index.html", Type: tar.TypeReg, Mode: 0o644, Data: []byte(indexHTML)},
		{Name: "www/pi.jpg", Type: tar.TypeReg, Mode: 0o644, Data: pic},
	}
	for _, a := range busyboxApplets {
		files = append(files, File{Name: "bin/" + a, Type: tar.TypeSymlink, Mode: 0o777, Linkname: "busybox"})
	}
	layer, err := SortedTar(files)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Name:     full,
		Platform: HostPlatform(),
		Config: ispec.ImageConfig{
			Cmd:          []string{"httpd", "-f", "-p", "80", "-h", "/www"},
			ExposedPorts: map[string]struct{}{"80/tcp": {}},
			Env:          []string{"PATH=/bin"},
			WorkingDir:   "/",
		},
		Layers: [][]byte{layer},
	}, nil
}

// Picture draws a raspberry on a sky gradient, as a JPEG of a few KB.
func Picture() ([]byte, error) {
	const size = 192
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	for y := range size {
		for x := range size {
			t := float64(y) / size
			img.Set(x, y, color.RGBA{uint8(40 + 60*t), uint8(90 + 80*t), uint8(200 - 40*t), 255})
		}
	}
	disc := func(cx, cy, r float64, c color.RGBA) {
		for y := int(cy - r); y <= int(cy+r); y++ {
			for x := int(cx - r); x <= int(cx+r); x++ {
				dx, dy := float64(x)-cx, float64(y)-cy
				if d := math.Hypot(dx, dy); d <= r {
					// Lighten towards the upper left: a little relief.
					k := 1 + 0.35*math.Max(0, -(dx+dy)/(2*r))
					img.Set(x, y, color.RGBA{clamp(float64(c.R) * k), clamp(float64(c.G) * k), clamp(float64(c.B) * k), 255})
				}
			}
		}
	}
	// Leaves.
	for _, a := range []float64{-0.9, -0.3, 0.3, 0.9} {
		disc(96+38*math.Sin(a), 52-14*math.Cos(a), 17, color.RGBA{40, 150, 50, 255})
	}
	// Drupelets, rows narrowing towards the bottom.
	rows := []struct{ y, halfWidth float64 }{{72, 50}, {94, 56}, {116, 50}, {137, 38}, {156, 22}}
	for i, row := range rows {
		step := 21.0
		n := int(2*row.halfWidth/step) + 1
		start := 96 - float64(n-1)*step/2
		for j := range n {
			x := start + float64(j)*step
			if i%2 == 1 {
				x += 2
			}
			disc(x, row.y, 13, color.RGBA{190, 20, 70, 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 75}); err != nil {
		return nil, fmt.Errorf("draw picture: %w", err)
	}
	return buf.Bytes(), nil
}

func clamp(v float64) uint8 {
	return uint8(math.Min(255, math.Max(0, v)))
}
