package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/fsutil"
	"github.com/pirun/pirun/network"
)

// Status is what a container is doing, as far as the kernel says.
type Status string

const (
	// StatusCreating: pirun began making the container and has not finished
	// (still in progress, or the pirun process died halfway). rm -f removes it.
	StatusCreating Status = "creating"
	// StatusRunning: the container's init process is alive.
	StatusRunning Status = "running"
	// StatusExited: the container's init process is gone.
	StatusExited Status = "exited"
)

// phase is what pirun recorded on disk; Status is derived from it and from
// the kernel on every read.
type phase string

const (
	phaseCreating phase = "creating"
	phaseStarted  phase = "started"
)

// Container is pirun's record of one container. It is serialized as the
// container's state.json, and in `pirun ps --format json`.
type Container struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	ImageDigest string            `json:"image_digest"`
	Command     []string          `json:"command"`
	Status      Status            `json:"status"`
	Pid         int               `json:"pid"`
	IP          string            `json:"ip"`
	Created     time.Time         `json:"created"`
	Started     time.Time         `json:"started,omitzero"`
	ExitCode    *int              `json:"exit_code,omitempty"`
	Group       string            `json:"group,omitempty"`
	Network     string            `json:"network"`
	Endpoint    *network.Endpoint `json:"endpoint,omitempty"`
	CgroupPath  string            `json:"cgroup_path,omitempty"`
	// CgroupGroup is the spawn group's cgroup that holds CgroupPath and
	// carries the group's limits (Config.Cgroup = CgroupGroup); empty for
	// a container with a cgroup of its own.
	CgroupGroup string `json:"cgroup_group,omitempty"`
	// Restart is the restart policy (Config.Restart); Restarts counts the
	// restarts so far; Supervisor is the pid of the process that watches
	// the container (0: none).
	Restart    string `json:"restart,omitempty"`
	Restarts   int    `json:"restarts,omitempty"`
	Supervisor int    `json:"supervisor_pid,omitempty"`
	// StopRequested: a user stopped or removed the container; its
	// supervisor must not restart it.
	StopRequested bool      `json:"stop_requested,omitempty"`
	Resources     Resources `json:"resources,omitzero"`

	Phase     phase  `json:"phase"`
	PidStart  uint64 `json:"pid_start,omitempty"` // start time of Pid in clock ticks, guards against pid reuse
	LogPath   string `json:"log_path"`
	RootfsDir string `json:"rootfs_dir"`

	// Ports are the container's published ports (Config.Ports).
	Ports []network.PortMapping `json:"ports,omitempty"`
}

// ShortID is the first 12 characters of the id, as shown by ps.
func (c *Container) ShortID() string { return shortID(c.ID) }

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// MaxNameLen bounds names: they become hostnames (64 bytes at most).
const MaxNameLen = 63

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// ValidateName checks a container name, or a spawn prefix.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name %q: %w: empty", name, ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name %q: %w: longer than %d characters", name, ErrInvalidName, MaxNameLen)
	case !nameRE.MatchString(name):
		return fmt.Errorf("name %q: %w: use letters, digits, '_', '.' and '-', starting with a letter or digit", name, ErrInvalidName)
	}
	return nil
}

func newID() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate container id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

var idRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// store is the on-disk layout of the state directory.
type store struct{ dir string }

func (s store) containersDir() string         { return filepath.Join(s.dir, "containers") }
func (s store) containerDir(id string) string { return filepath.Join(s.dir, "containers", id) }
func (s store) stateFile(id string) string    { return filepath.Join(s.containerDir(id), "state.json") }
func (s store) namesDir() string              { return filepath.Join(s.dir, "names") }
func (s store) runcRoot() string              { return filepath.Join(s.dir, "runc") }
func (s store) networkDir() string            { return filepath.Join(s.dir, "network") }

func (s store) init() error {
	for _, d := range []string{s.dir, s.containersDir(), s.namesDir(), s.runcRoot(), s.networkDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("state directory %s: %w", d, err)
		}
	}
	return nil
}

// write saves c atomically: a temp file in the same directory, fsynced, renamed.
func (s store) write(c *Container) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("container %s: encode state: %w", c.ID, err)
	}
	if err := fsutil.WriteFileAtomic(s.stateFile(c.ID), b, 0o600); err != nil {
		return fmt.Errorf("container %s: write state: %w", c.ID, err)
	}
	return nil
}

// read loads the record of id. A missing record is ErrNotFound.
func (s store) read(id string) (*Container, error) {
	b, err := os.ReadFile(s.stateFile(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container %s: %w", shortID(id), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: read state: %w", shortID(id), err)
	}
	return s.decode(id, b)
}

// decode parses the record of container id.
func (s store) decode(id string, b []byte) (*Container, error) {
	var c Container
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("container %s: state file %s is corrupt: %w", shortID(id), s.stateFile(id), err)
	}
	if err := c.check(id); err != nil {
		return nil, fmt.Errorf("container %s: state file %s is corrupt: %w", shortID(id), s.stateFile(id), err)
	}
	// Paths inside the state directory follow from it, whatever the
	// record says (the directory may have been reached by another path).
	c.LogPath = filepath.Join(s.containerDir(id), "log")
	c.RootfsDir = filepath.Join(s.containerDir(id), "rootfs")
	return &c, nil
}

var groupCgroupRE = regexp.MustCompile(`^/` + cgroupParent + `/g-[0-9a-f]{12}$`)

// check refuses a record that does not belong in the directory of id, or
// names kernel objects pirun never makes: rm acts on what a record names
// (cgroups, addresses), so a damaged record must not steer it elsewhere.
func (c *Container) check(id string) error {
	switch {
	case c.ID != id:
		return fmt.Errorf("it is the record of container %q", c.ID)
	case c.CgroupGroup != "" && !groupCgroupRE.MatchString(c.CgroupGroup):
		return fmt.Errorf("group cgroup %q is not pirun's", c.CgroupGroup)
	case c.CgroupPath != "" && c.CgroupPath != cgroupPath(id) && (c.CgroupGroup == "" || c.CgroupPath != c.CgroupGroup+"/"+id):
		return fmt.Errorf("cgroup %q is not the container's", c.CgroupPath)
	case c.Endpoint != nil && c.Endpoint.ContainerID != id:
		return fmt.Errorf("network endpoint of container %q", c.Endpoint.ContainerID)
	case c.Pid < 0:
		return fmt.Errorf("pid %d", c.Pid)
	}
	if c.Name != "" {
		if err := ValidateName(c.Name); err != nil {
			return err
		}
	}
	return nil
}

// ids lists the ids that have a container directory (records or not).
func (s store) ids() ([]string, error) {
	ents, err := os.ReadDir(s.containersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	ids := make([]string, 0, len(ents))
	for _, e := range ents {
		if e.IsDir() && idRE.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// reserveName links names/<name> to id; it fails with ErrNameInUse if a
// container has the name. A name left pointing at a container that is gone
// (a pirun killed while removing it) is taken over.
func (s store) reserveName(name, id string) error {
	p := filepath.Join(s.namesDir(), name)
	err := os.Symlink(id, p)
	if errors.Is(err, os.ErrExist) {
		if owner, rerr := os.Readlink(p); rerr == nil {
			if _, serr := os.Stat(s.containerDir(owner)); errors.Is(serr, os.ErrNotExist) {
				tmp := p + ".tmp-" + shortID(id)
				if err = os.Symlink(id, tmp); err == nil {
					if err = replaceLink(tmp, p, owner); err != nil {
						os.Remove(tmp)
					}
				}
			}
		}
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("name %q: %w", name, ErrNameInUse)
	}
	if err != nil {
		return fmt.Errorf("name %q: reserve: %w", name, err)
	}
	return nil
}

// replaceLink puts the symlink tmp in place of p only if p still points at
// owner: it exchanges the two atomically and looks at what it got back; if
// that was not owner (another pirun took the name over first), it exchanges
// them back and reports ErrExist.
func replaceLink(tmp, p, owner string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	if got, err := os.Readlink(tmp); err == nil && got == owner {
		return os.Remove(tmp)
	}
	_ = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_EXCHANGE)
	return os.ErrExist
}

// releaseName removes names/<name> if it still points at id.
func (s store) releaseName(name, id string) error {
	p := filepath.Join(s.namesDir(), name)
	if target, err := os.Readlink(p); err != nil || target != id {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("name %q: release: %w", name, err)
	}
	return nil
}

func (s store) nameTarget(name string) (string, bool) {
	if ValidateName(name) != nil {
		return "", false
	}
	target, err := os.Readlink(filepath.Join(s.namesDir(), name))
	return target, err == nil
}

// names returns the names in use, for picking free spawn indices.
func (s store) names() (map[string]bool, error) {
	ents, err := os.ReadDir(s.namesDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list names: %w", err)
	}
	m := make(map[string]bool, len(ents))
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m, nil
}

// resolve finds a container id from a name, a full id or a unique id prefix.
func (s store) resolve(ref string) (string, error) {
	if id, ok := s.nameTarget(ref); ok {
		return id, nil
	}
	if ref == "" || strings.ContainsAny(ref, "/.") {
		return "", fmt.Errorf("container %q: %w", ref, ErrNotFound)
	}
	if idRE.MatchString(ref) {
		if _, err := os.Stat(s.containerDir(ref)); err == nil {
			return ref, nil
		}
		return "", fmt.Errorf("container %q: %w", ref, ErrNotFound)
	}
	ids, err := s.ids()
	if err != nil {
		return "", err
	}
	var found []string
	for _, id := range ids {
		if strings.HasPrefix(id, ref) {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("container %q: %w", ref, ErrNotFound)
	case 1:
		return found[0], nil
	default:
		sort.Strings(found)
		return "", fmt.Errorf("container %q: %w (%d match)", ref, ErrAmbiguous, len(found))
	}
}

// lock takes an exclusive flock on the lock file in the container's
// directory, which must exist: locking a removed container must not bring
// its directory back (a supervisor racing rm would leave an empty one
// behind). A directory removed while waiting for the lock is the caller's
// to notice: its record reads as ErrNotFound. The returned func releases it.
func (s store) lock(id string) (func(), error) {
	unlock, err := fsutil.Lock(context.Background(), filepath.Join(s.containerDir(id), "lock"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container %s: %w", shortID(id), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: lock: %w", shortID(id), err)
	}
	return unlock, nil
}
