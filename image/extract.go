package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A layer tar is unpacked by extractor, into a fresh, empty directory of
// its own that nothing else writes (a layers/.tmp-* of the pull holding
// the store's lock). Two facts make it much cheaper than a general
// extractor such as umoci's, which pirun used before (its per-entry
// restoring of the parent directory, lookups through the whole path and a
// new copy buffer per file cost a dozen system calls and 32 KiB per
// entry):
//
//   - Every path of the tree was made by this layer, so what is at a path
//     is known without asking the file system (nodes): a check that an
//     entry does not go through a symlink of the layer is a map look-up.
//   - Entries are created relative to descriptors of their parent
//     directories, each opened with O_NOFOLLOW|O_DIRECTORY from its own
//     parent, starting from the tree: the kernel never follows a symlink
//     on the way, whatever the layer holds, so nothing can land outside
//     the tree even if the bookkeeping were wrong.
//
// A regular file costs openat, write, fchown, fchmod, utimensat and close.
// Directory times are set at the end, once nothing is added to them.
//
// Whiteouts are converted for overlayfs as umoci did: ".wh.NAME" becomes a
// 0:0 character device (none inside a directory this layer made opaque),
// ".wh..wh..opq" the trusted.overlay.opaque xattr on its directory (and
// removes the plain whiteouts this layer made in it); xattrs of the tar
// named trusted.overlay.* are escaped to trusted.overlay.overlay.*, and
// security.selinux and system.nfs4_acl are not restored.

const (
	whiteoutPrefix     = ".wh."
	whiteoutOpaque     = ".wh..wh..opq"
	overlayOpaqueXattr = "trusted.overlay.opaque"
	overlayXattrPrefix = "trusted.overlay."
	paxXattrPrefix     = "SCHILY.xattr."
	// maxDirFds bounds the directory descriptors an extractor keeps open
	// (a few layers are unpacked at once).
	maxDirFds = 64
	// copyBufSize is the extractor's copy buffer, reused for every file.
	copyBufSize = 32 << 10
)

// nodeKind is what the layer made at a path.
type nodeKind uint8

const (
	nodeNone nodeKind = iota
	nodeDir
	nodeSymlink
	nodeFile     // a regular file, a hard link to one, a FIFO
	nodeWhiteout // an overlay whiteout (0:0 character device)
)

type extractor struct {
	tree      string
	nodes     map[string]nodeKind // by clean relative path; "" is the tree
	fds       map[string]int      // O_PATH descriptors of directories
	opaque    map[string]bool     // directories this layer made opaque
	whiteouts []string            // plain whiteouts made, in order
	dirTimes  []dirTime           // directory times, set at the end
	buf       []byte
}

type dirTime struct {
	name string
	ts   []unix.Timespec
}

func newExtractor(tree string) (*extractor, error) {
	fd, err := unix.Open(tree, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: tree, Err: err}
	}
	return &extractor{
		tree:   tree,
		nodes:  map[string]nodeKind{"": nodeDir},
		fds:    map[string]int{"": fd},
		opaque: map[string]bool{},
		buf:    make([]byte, copyBufSize),
	}, nil
}

// close releases the descriptors, the tree's included.
func (x *extractor) close() {
	x.closeFds()
	_ = unix.Close(x.fds[""])
	delete(x.fds, "")
}

// closeFds closes the descriptors of the directories below the tree.
func (x *extractor) closeFds() {
	for name, fd := range x.fds {
		if name != "" {
			_ = unix.Close(fd)
			delete(x.fds, name)
		}
	}
}

// unpackTar unpacks the layer tar r into the empty directory tree,
// converting whiteouts for overlayfs. A hostile entry (see checkPath, and
// a path or a hard link through a symlink of the layer, a device node) is
// refused with ErrInvalidLayer.
func unpackTar(ctx context.Context, tree string, r io.Reader) error {
	x, err := newExtractor(tree)
	if err != nil {
		return err
	}
	defer x.close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidLayer, err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
	}
	return x.finish()
}

// entry unpacks one tar entry.
func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := x.check(hdr)
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrInvalidLayer, hdr.Name, err)
	}
	if len(x.fds) > maxDirFds {
		x.closeFds()
	}
	if err := x.unpack(name, hdr, r); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	return nil
}

// check refuses a hostile entry and returns its clean name ("" for the
// tree itself): an absolute path or one with a ".." element, a device
// node, a path through a symlink of the layer, a hard link whose target
// is any of these, a whiteout of nothing, a non-directory for the tree.
func (x *extractor) check(hdr *tar.Header) (string, error) {
	if err := checkPath(hdr.Name); err != nil {
		return "", err
	}
	name := cleanName(hdr.Name)
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		return "", errors.New("device node")
	case tar.TypeLink:
		if err := checkPath(hdr.Linkname); err != nil {
			return "", fmt.Errorf("hard link target: %w", err)
		}
		target := cleanName(hdr.Linkname)
		if target == "" {
			return "", errors.New("hard link target: the layer's root")
		}
		if err := x.checkParents(target); err != nil {
			return "", fmt.Errorf("hard link target: %w", err)
		}
	}
	if name == "" && hdr.Typeflag != tar.TypeDir {
		return "", errors.New("the layer's root is not a directory")
	}
	if base := path.Base(name); strings.HasPrefix(base, whiteoutPrefix) && base != whiteoutOpaque {
		if t := strings.TrimPrefix(base, whiteoutPrefix); t == "" || t == "." || t == ".." {
			return "", errors.New("whiteout of nothing")
		}
	}
	return name, x.checkParents(name)
}

// checkParents refuses a path whose parent directories go through a
// symlink the layer made.
func (x *extractor) checkParents(name string) error {
	for i := range len(name) {
		if name[i] == '/' && x.nodes[name[:i]] == nodeSymlink {
			return fmt.Errorf("path goes through the symlink %s", name[:i])
		}
	}
	return nil
}

func checkPath(name string) error {
	if name == "" {
		return errors.New("empty path")
	}
	if strings.HasPrefix(name, "/") {
		return errors.New("absolute path")
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return errors.New("path escapes the layer")
		}
	}
	return nil
}

// cleanName is the clean relative path of a checked name, "" for the
// tree itself.
func cleanName(name string) string {
	name = path.Clean(name)
	if name == "." {
		return ""
	}
	return name
}

// splitName returns the parent directory ("" for the tree) and the last
// element of a clean relative path.
func splitName(name string) (string, string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

func (x *extractor) unpack(name string, hdr *tar.Header, r io.Reader) error {
	parent, base := splitName(name)
	if name == "" {
		return x.meta(-1, "", hdr, nodeDir)
	}
	if base == whiteoutOpaque {
		return x.opaqueDir(parent)
	}
	if t, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		return x.whiteout(path.Join(parent, t))
	}
	pfd, err := x.dir(parent)
	if err != nil {
		return err
	}
	kind := nodeKindOf(hdr.Typeflag)
	if kind == nodeDir && x.nodes[name] == nodeDir {
		return x.meta(pfd, name, hdr, nodeDir) // a directory again: its metadata
	}
	for try := 0; ; try++ {
		// What was there (made by an earlier entry) is replaced.
		if x.nodes[name] != nodeNone {
			if err := x.remove(name); err != nil {
				return err
			}
			if pfd, err = x.dir(parent); err != nil {
				return err
			}
		}
		err = x.create(pfd, name, base, hdr, r)
		if !errors.Is(err, unix.EEXIST) || try > 0 {
			return err
		}
		// Not made by this layer, so never there: remove it all the same.
		x.nodes[name] = nodeFile
		var st unix.Stat_t
		if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			x.nodes[name] = nodeDir
		}
	}
}

func nodeKindOf(typ byte) nodeKind {
	switch typ {
	case tar.TypeDir:
		return nodeDir
	case tar.TypeSymlink:
		return nodeSymlink
	}
	return nodeFile
}

// create makes the entry name (base in the directory pfd) and applies its
// metadata.
func (x *extractor) create(pfd int, name, base string, hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse: //nolint:staticcheck // TypeRegA is still found in old layers
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		x.nodes[name] = nodeFile
		err = x.writeFile(fd, hdr, r)
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = fmt.Errorf("close: %w", cerr)
		}
		if err != nil {
			return err
		}
		return x.setTimes(pfd, base, hdr)
	case tar.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
		x.nodes[name] = nodeDir
		return x.meta(pfd, name, hdr, nodeDir)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		x.nodes[name] = nodeSymlink
		return x.meta(pfd, name, hdr, nodeSymlink)
	case tar.TypeLink:
		target := cleanName(hdr.Linkname)
		tparent, tbase := splitName(target)
		tfd, err := x.dir(tparent)
		if err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
			return fmt.Errorf("hard link to %s: %w", target, err)
		}
		// A hard link to a symlink is a symlink.
		x.nodes[name] = nodeFile
		if x.nodes[target] == nodeSymlink {
			x.nodes[name] = nodeSymlink
		}
		return nil
	case tar.TypeFifo:
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return fmt.Errorf("mkfifo: %w", err)
		}
		x.nodes[name] = nodeFile
		return x.meta(pfd, name, hdr, nodeFile)
	}
	return fmt.Errorf("%w: unsupported entry type %q", ErrInvalidLayer, hdr.Typeflag)
}

// writeFile copies a regular file's content and applies its metadata but
// its times.
func (x *extractor) writeFile(fd int, hdr *tar.Header, r io.Reader) error {
	var n int64
	for {
		m, rerr := r.Read(x.buf)
		for b := x.buf[:m]; len(b) > 0; {
			w, err := unix.Write(fd, b)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("write: %w", err)
			}
			b = b[w:]
		}
		n += int64(m)
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if n != hdr.Size {
		return fmt.Errorf("wrote %d bytes of %d", n, hdr.Size)
	}
	return fdMeta(fd, hdr)
}

// meta applies the owner, mode, xattrs and times of hdr to what the
// layer made at name (base in the directory pfd). A directory's times are
// set by finish.
func (x *extractor) meta(pfd int, name string, hdr *tar.Header, kind nodeKind) error {
	if kind == nodeDir {
		// Through a descriptor of the directory itself, from one opened
		// with O_NOFOLLOW: nothing but the directory can be changed.
		dfd, err := x.dir(name)
		if err != nil {
			return err
		}
		fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		err = fdMeta(fd, hdr)
		_ = unix.Close(fd)
		x.dirTimes = append(x.dirTimes, dirTime{name, tarTimes(hdr)})
		return err
	}
	// A symlink or a FIFO, just made at base: none of these calls follows
	// a symlink but fchmodat, and base is none then.
	_, base := splitName(name)
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if kind != nodeSymlink {
		if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := eachXattr(hdr, func(attr string, value []byte) error {
		return unix.Lsetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base), attr, value, 0)
	}); err != nil {
		return err
	}
	return x.setTimes(pfd, base, hdr)
}

// fdMeta applies the owner, mode and xattrs of hdr to the open file fd,
// in that order: chown clears setuid bits and file capabilities.
func fdMeta(fd int, hdr *tar.Header) error {
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return eachXattr(hdr, func(attr string, value []byte) error {
		return unix.Fsetxattr(fd, attr, value, 0)
	})
}

func (x *extractor) setTimes(pfd int, base string, hdr *tar.Header) error {
	if err := unix.UtimesNanoAt(pfd, base, tarTimes(hdr), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// tarTimes are the access and modification times of hdr; an archive
// without them gets the current time.
func tarTimes(hdr *tar.Header) []unix.Timespec {
	mtime := hdr.ModTime
	if mtime.IsZero() {
		mtime = time.Now()
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = mtime
	}
	return []unix.Timespec{timespec(atime), timespec(mtime)}
}

func timespec(t time.Time) unix.Timespec {
	ts, err := unix.TimeToTimespec(t)
	if err != nil { // out of range of a 32-bit time_t
		ts, _ = unix.TimeToTimespec(time.Now())
	}
	return ts
}

// eachXattr calls set for each xattr of hdr that is restored, with its
// name on disk; a file system without xattrs is not an error.
func eachXattr(hdr *tar.Header, set func(string, []byte) error) error {
	for key, value := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(key, paxXattrPrefix)
		if !ok || attr == "security.selinux" || attr == "system.nfs4_acl" {
			continue
		}
		if rest, ok := strings.CutPrefix(attr, overlayXattrPrefix); ok {
			// Not for the overlay that stacks this layer: escaped, as
			// overlayfs itself does.
			attr = overlayXattrPrefix + "overlay." + rest
		}
		if err := set(attr, []byte(value)); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}

// dir returns a descriptor of the directory name of the tree, making it
// (mode 0755) if the layer has not. Each element is opened from its
// parent with O_NOFOLLOW, so no symlink is ever followed. A file or a
// whiteout in the way is replaced (a whiteout by an opaque directory), as
// umoci did.
func (x *extractor) dir(name string) (int, error) {
	if fd, ok := x.fds[name]; ok {
		return fd, nil
	}
	parent, base := splitName(name)
	pfd, err := x.dir(parent)
	if err != nil {
		return -1, err
	}
	kind := x.nodes[name]
	switch kind {
	case nodeDir:
	case nodeSymlink:
		return -1, fmt.Errorf("path goes through the symlink %s", name)
	default:
		if kind != nodeNone {
			if err := x.remove(name); err != nil {
				return -1, err
			}
			if pfd, err = x.dir(parent); err != nil {
				return -1, err
			}
		}
		if err := unix.Mkdirat(pfd, base, 0o755); err != nil {
			return -1, fmt.Errorf("mkdir %s: %w", name, err)
		}
		if err := unix.Fchmodat(pfd, base, 0o755, 0); err != nil {
			return -1, fmt.Errorf("chmod %s: %w", name, err)
		}
		x.nodes[name] = nodeDir
	}
	fd, err := unix.Openat(pfd, base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open directory %s: %w", name, err)
	}
	x.fds[name] = fd
	if kind == nodeWhiteout {
		if err := x.opaqueDir(name); err != nil {
			return -1, err
		}
	}
	return fd, nil
}

// remove removes what the layer made at name, and forgets it.
func (x *extractor) remove(name string) error {
	if x.nodes[name] != nodeDir {
		parent, base := splitName(name)
		pfd, err := x.dir(parent)
		if err != nil {
			return err
		}
		if err := unix.Unlinkat(pfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", name, err)
		}
		delete(x.nodes, name)
		return nil
	}
	// A directory: rare enough to drop every cached descriptor, and to
	// remove through an os.Root, which never leaves the tree.
	x.closeFds()
	root, err := os.OpenRoot(x.tree)
	if err != nil {
		return err
	}
	err = root.RemoveAll(name)
	_ = root.Close()
	if err != nil {
		return err
	}
	under := func(p string) bool { return p == name || strings.HasPrefix(p, name+"/") }
	for p := range x.nodes {
		if under(p) {
			delete(x.nodes, p)
		}
	}
	for p := range x.opaque {
		if under(p) {
			delete(x.opaque, p)
		}
	}
	x.dirTimes = deleteFunc(x.dirTimes, func(d dirTime) bool { return under(d.name) })
	x.whiteouts = deleteFunc(x.whiteouts, under)
	return nil
}

func deleteFunc[T any](s []T, del func(T) bool) []T {
	out := s[:0]
	for _, v := range s {
		if !del(v) {
			out = append(out, v)
		}
	}
	return out
}

// opaqueDir makes the directory name opaque: overlayfs shows none of the
// lower layers' content there. The plain whiteouts this layer made in it
// are removed (overlayfs would list them in an opaque directory).
func (x *extractor) opaqueDir(name string) error {
	dfd, err := x.dir(name)
	if err != nil {
		return err
	}
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	err = unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0)
	_ = unix.Close(fd)
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", overlayOpaqueXattr, name, err)
	}
	x.opaque[name] = true
	for _, w := range x.whiteouts {
		if x.nodes[w] == nodeWhiteout && (name == "" || strings.HasPrefix(w, name+"/")) {
			if err := x.remove(w); err != nil {
				return err
			}
		}
	}
	x.whiteouts = deleteFunc(x.whiteouts, func(w string) bool { return x.nodes[w] != nodeWhiteout })
	return nil
}

// whiteout hides name of the lower layers: what this layer made there is
// removed and, unless a directory above is opaque, replaced by a 0:0
// character device.
func (x *extractor) whiteout(name string) error {
	if x.nodes[name] != nodeNone {
		if err := x.remove(name); err != nil {
			return err
		}
	}
	parent, base := splitName(name)
	for p := parent; ; p, _ = splitName(p) {
		if x.opaque[p] {
			return nil
		}
		if p == "" {
			break
		}
	}
	pfd, err := x.dir(parent)
	if err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, base, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout %s: %w", name, err)
	}
	x.nodes[name] = nodeWhiteout
	x.whiteouts = append(x.whiteouts, name)
	return nil
}

// finish sets the times of the directories, now that nothing is added to
// them.
func (x *extractor) finish() error {
	for _, d := range x.dirTimes {
		if len(x.fds) > maxDirFds {
			x.closeFds()
		}
		if d.name == "" {
			if err := unix.UtimesNanoAt(x.fds[""], ".", d.ts, 0); err != nil {
				return fmt.Errorf("set times of the layer's root: %w", err)
			}
			continue
		}
		parent, base := splitName(d.name)
		pfd, err := x.dir(parent)
		if err != nil {
			return err
		}
		if err := unix.UtimesNanoAt(pfd, base, d.ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("set times of %s: %w", d.name, err)
		}
	}
	return nil
}
