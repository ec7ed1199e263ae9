package runtime

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Device makes a host device node available in containers, e.g.
// /dev/gpiomem on a Raspberry Pi.
type Device struct {
	Host      string `json:"host"`      // the node on the host, e.g. /dev/gpiomem
	Container string `json:"container"` // where it appears; default: the same path
}

// ParseDevice parses HOST[:CONTAINER].
func ParseDevice(s string) (Device, error) {
	host, ctr, _ := strings.Cut(s, ":")
	if ctr == "" {
		ctr = host
	}
	d := Device{Host: host, Container: ctr}
	if !filepath.IsAbs(host) || !filepath.IsAbs(ctr) || filepath.Clean(ctr) != ctr || !strings.HasPrefix(ctr, "/dev/") {
		return Device{}, fmt.Errorf("device %q: %w: use HOST[:CONTAINER] with absolute paths, the container's under /dev", s, ErrInvalidConfig)
	}
	return d, nil
}

// specDevices turns devices into OCI device nodes and cgroup rules that
// allow them (read, write, mknod), from the host nodes' types and numbers.
func specDevices(devs []Device) ([]specs.LinuxDevice, []specs.LinuxDeviceCgroup, error) {
	var nodes []specs.LinuxDevice
	var rules []specs.LinuxDeviceCgroup
	for _, d := range devs {
		var st unix.Stat_t
		if err := unix.Stat(d.Host, &st); err != nil {
			return nil, nil, fmt.Errorf("device %s: %w", d.Host, err)
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nil, nil, fmt.Errorf("device %s: %w: not a device node", d.Host, ErrInvalidConfig)
		}
		major, minor := int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev)))
		mode := st.Mode &^ unix.S_IFMT
		fileMode := fileModeOf(mode)
		uid, gid := st.Uid, st.Gid
		nodes = append(nodes, specs.LinuxDevice{Path: d.Container, Type: typ, Major: major, Minor: minor, FileMode: &fileMode, UID: &uid, GID: &gid})
		rules = append(rules, specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: &major, Minor: &minor, Access: "rwm"})
	}
	return nodes, rules, nil
}

func fileModeOf(m uint32) (fm fs.FileMode) { return fs.FileMode(m & 0o7777) }
