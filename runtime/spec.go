package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pirun/pirun/image"
)

// defaultCaps is the capability set Docker and runc give a container.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// template is everything about a container's configuration that is the same
// for every replica of a spawn group: it is worked out once per group and
// copied per container with only the id-dependent fields changed.
type template struct {
	config *configs.Config
	args   []string
	env    []string
	cwd    string
	uid    int
	gid    int
	groups []int
}

// specFor builds the OCI runtime spec of a container of img. It follows
// runc's defaults (specconv.Example), with a read-only root, Docker's
// capability set, no-new-privileges, the masked and read-only paths, and
// small tmpfs mounts only where a writable path is needed. It sets no
// rlimits (the container inherits pirun's) and mounts no cgroup filesystem.
func specFor(args, env []string, cwd string) *specs.Spec {
	s := specconv.Example()
	s.Root = &specs.Root{Path: "/", Readonly: true} // Path is set per container
	s.Hostname = ""
	s.Process.Terminal = false
	s.Process.Args = args
	s.Process.Env = env
	s.Process.Cwd = cwd
	s.Process.Rlimits = nil
	s.Process.NoNewPrivileges = true
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:  defaultCaps,
		Effective: defaultCaps,
		Permitted: defaultCaps,
	}
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		switch m.Destination {
		case "/sys/fs/cgroup", "/dev/mqueue":
			continue // one mount per v1 hierarchy: not worth it for pirun's workloads
		case "/dev/shm":
			m.Options = []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}
		}
		mounts = append(mounts, m)
	}
	mounts = append(mounts, specs.Mount{
		Destination: "/tmp", Type: "tmpfs", Source: "tmpfs",
		Options: []string{"nosuid", "nodev", "mode=1777", "size=65536k"},
	})
	s.Mounts = mounts
	s.Linux.Namespaces = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}, // set per container
	}
	s.Linux.Resources = &specs.LinuxResources{}
	return s
}

// newTemplate works out the container configuration shared by every
// replica of img run as cfg says, with the limits res and capabilities caps.
func newTemplate(img *image.Image, lowerdirs []string, cfg *Config, res Resources, caps []string) (*template, error) {
	cmd, extraEnv, devs := cfg.Cmd, cfg.Env, cfg.Devices
	args := append(append([]string{}, img.Config.Entrypoint...), img.Config.Cmd...)
	if len(cmd) > 0 {
		args = append(append([]string{}, img.Config.Entrypoint...), cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("image %s: %w: no command given and the image has none", img.Name, ErrInvalidConfig)
	}
	env := mergeEnv(img.Config.Env, extraEnv)
	cwd := img.Config.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	uid, gid, groups, err := resolveUser(img.Config.User, lowerdirs)
	if err != nil {
		return nil, fmt.Errorf("image %s: user %q: %w", img.Name, img.Config.User, err)
	}
	spec := specFor(args, env, cwd)
	spec.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	if cfg.Seccomp != SeccompUnconfined {
		// After the capabilities: they widen Docker's profile.
		if spec.Linux.Seccomp, err = defaultSeccomp(spec); err != nil {
			return nil, fmt.Errorf("image %s: seccomp profile: %w", img.Name, err)
		}
	}
	spec.Linux.Resources = res.spec()
	if spec.Linux.Devices, spec.Linux.Resources.Devices, err = specDevices(devs); err != nil {
		return nil, err
	}
	spec.Linux.CgroupsPath = "/pirun/template"
	lc, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: "template",
		Spec:       spec,
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: container configuration: %w", img.Name, err)
	}
	return &template{config: lc, args: args, env: env, cwd: cwd, uid: uid, gid: gid, groups: groups}, nil
}

// configFor copies the template and fills in what differs per container.
// An empty netnsPath leaves the container in the host's network namespace.
func (t *template) configFor(cgPath, hostname, rootfs, netnsPath string) *configs.Config {
	c := *t.config
	c.Rootfs = rootfs
	c.Hostname = hostname
	cg := *t.config.Cgroups
	cg.Path = cgPath
	cg.Name, cg.Parent = "", ""
	c.Cgroups = &cg
	c.Namespaces = make(configs.Namespaces, 0, len(t.config.Namespaces))
	for _, ns := range t.config.Namespaces {
		if ns.Type == configs.NEWNET {
			if netnsPath == "" {
				continue
			}
			ns.Path = netnsPath
		}
		c.Namespaces = append(c.Namespaces, ns)
	}
	return &c
}

// cgroupParent holds every pirun container's cgroup, in each hierarchy.
const cgroupParent = "pirun"

func cgroupPath(id string) string { return "/" + cgroupParent + "/" + id }

func mergeEnv(base, extra []string) []string {
	env := make([]string, 0, len(base)+len(extra)+1)
	seen := map[string]int{}
	add := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := seen[k]; ok {
			env[i] = kv
			return
		}
		seen[k] = len(env)
		env = append(env, kv)
	}
	for _, kv := range base {
		add(kv)
	}
	for _, kv := range extra {
		add(kv)
	}
	if _, ok := seen["PATH"]; !ok {
		add("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return env
}

// resolveUser turns an image's User ("", "uid", "uid:gid", "name",
// "name:group") into ids, reading /etc/passwd and /etc/group from the
// image's layers (top layer first) when names are used.
func resolveUser(user string, lowerdirs []string) (uid, gid int, groups []int, err error) {
	if user == "" {
		return 0, 0, nil, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	uid, err = lookupID(u, "etc/passwd", lowerdirs, &gid)
	if err != nil {
		return 0, 0, nil, err
	}
	if hasGroup {
		if gid, err = lookupID(g, "etc/group", lowerdirs, nil); err != nil {
			return 0, 0, nil, err
		}
	}
	return uid, gid, nil, nil
}

// lookupID resolves a numeric id, or a name in the image's passwd or group
// file. For passwd entries it also returns the user's primary group in gid.
func lookupID(name, file string, lowerdirs []string, gid *int) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%w: negative id %d", ErrInvalidConfig, n)
		}
		if gid != nil {
			*gid = n
		}
		return n, nil
	}
	for _, dir := range lowerdirs {
		f, err := os.Open(filepath.Join(dir, file))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			parts := strings.Split(sc.Text(), ":")
			if len(parts) < 3 || parts[0] != name {
				continue
			}
			id, err := strconv.Atoi(parts[2])
			if err != nil {
				break
			}
			if gid != nil && len(parts) > 3 {
				if g, err := strconv.Atoi(parts[3]); err == nil {
					*gid = g
				}
			}
			return id, nil
		}
		break // the top-most file that exists is the one the container sees
	}
	return 0, fmt.Errorf("%w: %q not found in the image's /%s", ErrInvalidConfig, name, file)
}
