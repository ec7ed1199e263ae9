package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/internal/fsutil"
)

// lock takes the state directory's flock, waiting until ctx is done.
func (b *Bridge) lock(ctx context.Context) (unlock func(), err error) {
	unlock, err = fsutil.Lock(ctx, filepath.Join(b.dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("network %s: lock: %w", b.name, err)
	}
	return unlock, nil
}

// writeTemp writes data to a new temporary file in dir, fsynced if sync.
func writeTemp(dir string, data []byte, sync bool) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// createExclusive creates path with data, complete or not at all: the data
// goes to a temporary file that is then linked to path, which fails with an
// error matching os.ErrExist when path exists (like O_EXCL). It does not
// fsync: a batch of them ends with one syncFS.
func createExclusive(path string, data []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), data, false)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	return os.Link(tmp, path)
}

// syncFS flushes the filesystem holding dir: one flush for a batch of
// files instead of one fsync each.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// lockExisting takes an exclusive flock on a file that exists and that
// pirun does not own (opened read-only: it may be a program being run),
// waiting at most timeout.
func lockExisting(path string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, err
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("still locked after %s", timeout)
		}
		time.Sleep(wait)
	}
}
