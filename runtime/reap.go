package runtime

import (
	"os"

	"golang.org/x/sys/unix"
)

// exitWatch reports the exit code of a container init that this process
// started (and so must reap: a long-lived program that starts containers
// would otherwise collect zombies until it exits).
type exitWatch struct {
	done chan struct{}
	code int
}

// reap waits for child pid to exit, without holding an OS thread: the pidfd
// is parked in Go's netpoller, and wait4 runs only once it is readable. A
// detached pirun CLI exits long before; its containers' inits are then
// reaped by the host's init (or a subreaper).
func reap(pid int) (*exitWatch, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &exitWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer f.Close()
		// Read returns once the pidfd is readable: the process has exited.
		_ = rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(pfd, 0)
			return n > 0
		})
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				if err != nil {
					w.code = -1
					return
				}
				break
			}
		}
		w.code = exitCode(ws)
	}()
	return w, nil
}

// exited reports whether the watched process has exited, and its code.
func (w *exitWatch) exited() (int, bool) {
	select {
	case <-w.done:
		return w.code, true
	default:
		return 0, false
	}
}
