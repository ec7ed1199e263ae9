package image

import (
	"bufio"
	"fmt"
	"os"
	goruntime "runtime"
	"strings"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ParsePlatform parses OS/ARCH[/VARIANT], e.g. "linux/arm/v7" or
// "linux/arm64". A bad platform yields an error wrapping [ErrInvalidRef].
func ParsePlatform(s string) (ispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return ispec.Platform{}, fmt.Errorf("platform %q: %w: want OS/ARCH[/VARIANT], e.g. linux/arm/v7", s, ErrInvalidRef)
	}
	p := ispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// FormatPlatform returns p as OS/ARCH[/VARIANT].
func FormatPlatform(p ispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// HostPlatform returns the platform of this machine: linux/amd64,
// linux/arm64, or linux/arm/v6|v7 from /proc/cpuinfo (a Raspberry Pi 2 is
// linux/arm/v7).
func HostPlatform() ispec.Platform {
	p := ispec.Platform{OS: goruntime.GOOS, Architecture: goruntime.GOARCH}
	if p.Architecture == "arm" {
		p.Variant = armVariant()
	}
	return p
}

func armVariant() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "v7"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "CPU architecture" {
			continue
		}
		switch v = strings.TrimSpace(v); v {
		case "5", "6", "7":
			return "v" + v
		case "8", "AArch64":
			return "v8"
		}
	}
	return "v7"
}
