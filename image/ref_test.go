package image

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"rpi-busybox-httpd", "docker.io/library/rpi-busybox-httpd:latest"},
		{"rpi-busybox-httpd:latest", "docker.io/library/rpi-busybox-httpd:latest"},
		{"docker.io/library/rpi-busybox-httpd:latest", "docker.io/library/rpi-busybox-httpd:latest"},
		{"library/busybox:1.36", "docker.io/library/busybox:1.36"},
		{"hypriot/rpi-busybox-httpd", "docker.io/hypriot/rpi-busybox-httpd:latest"},
		{"localhost:5000/x", "localhost:5000/x:latest"},
		{"ghcr.io/pirun/web:v1", "ghcr.io/pirun/web:v1"},
		{"busybox@sha256:" + strings.Repeat("a", 64), "docker.io/library/busybox@sha256:" + strings.Repeat("a", 64)},
	} {
		got, err := NormalizeName(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "UPPER", "a b", "x:", ":tag", "x::y", strings.Repeat("a", 64), "-x", "x@sha256:short"} {
		_, err := NormalizeName(bad)
		if !errors.Is(err, ErrInvalidRef) {
			t.Errorf("NormalizeName(%q) error = %v, want ErrInvalidRef", bad, err)
			continue
		}
		if !strings.Contains(err.Error(), "\""+bad+"\"") {
			t.Errorf("NormalizeName(%q) error %q does not name the input", bad, err)
		}
	}
}

func TestFamiliarName(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/x:latest":       "x:latest",
		"docker.io/hypriot/x:1":            "hypriot/x:1",
		"localhost:5000/x:latest":          "localhost:5000/x:latest",
		"not a reference":                  "not a reference",
		"docker.io/library/busybox:1.36.1": "busybox:1.36.1",
	} {
		if got := FamiliarName(in); got != want {
			t.Errorf("FamiliarName(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"rpi-busybox-httpd", "docker.io/library/x:latest", "localhost:5000/a/b:c", "x@sha256:" + strings.Repeat("0", 64), "UPPER", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeName(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidRef) {
				t.Fatalf("NormalizeName(%q): error %v does not wrap ErrInvalidRef", s, err)
			}
			return
		}
		// Normalizing is idempotent, and the familiar form leads back.
		if n2, err := NormalizeName(n); err != nil || n2 != n {
			t.Fatalf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q, %v", s, n, n, n2, err)
		}
		if n3, err := NormalizeName(FamiliarName(n)); err != nil || n3 != n {
			t.Fatalf("NormalizeName(FamiliarName(%q)) = %q, %v", n, n3, err)
		}
	})
}

// FuzzParseSource feeds arbitrary pull references to the parser (which
// touches nothing): it fails with ErrInvalidRef or yields a transport and,
// for a registry, a normalized name that parses again.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"busybox", "docker://127.0.0.1:5000/x/y:1", "oci-archive:/a.tar:x", "docker-archive:/d.tar", "oci:", "http://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		src, err := parseSource(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidRef) {
				t.Fatalf("parseSource(%q): error %v does not wrap ErrInvalidRef", s, err)
			}
			return
		}
		switch src.transport {
		case "docker":
			if src.docker == nil || src.name == "" {
				t.Fatalf("parseSource(%q): registry reference without a name", s)
			}
			if n, err := NormalizeName(src.name); err != nil || n != src.name {
				t.Fatalf("parseSource(%q) name %q does not normalize to itself: %q, %v", s, src.name, n, err)
			}
		case "oci", "oci-archive", "docker-archive":
			if src.rest == "" {
				t.Fatalf("parseSource(%q): empty path", s)
			}
		default:
			t.Fatalf("parseSource(%q): transport %q", s, src.transport)
		}
	})
}
