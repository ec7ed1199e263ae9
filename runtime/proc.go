package runtime

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// procStartTime reads the start time (field 22 of /proc/PID/stat, in clock
// ticks since boot) of pid. Together with the pid it names one process for
// good: a recycled pid has another start time.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return 0, os.ErrNotExist // a zombie has exited
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// openProcess returns a pidfd for pid if it is still the process that
// started at startTime, or os.ErrNotExist if that process has exited.
// Signals sent through the pidfd can never reach a recycled pid.
func openProcess(pid int, startTime uint64) (int, error) {
	if pid <= 0 {
		return -1, os.ErrNotExist
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, os.ErrNotExist
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// The pidfd pins pid: check it is still the process we recorded.
	st, err := procStartTime(pid)
	if err != nil || st != startTime {
		unix.Close(fd)
		return -1, os.ErrNotExist
	}
	return fd, nil
}

// alive reports whether the process pid that started at startTime runs.
func alive(pid int, startTime uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := procStartTime(pid)
	return err == nil && st == startTime
}

// waitExited waits until every pidfd in fds is readable (its process has
// exited) or the deadline passes. It returns the fds whose processes still
// run. One poll(2) watches them all, so stopping a thousand containers needs
// no thousand threads.
func waitExited(fds []int, deadline time.Time) []int {
	pending := fds
	for len(pending) > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			return pending
		}
		pfds := make([]unix.PollFd, len(pending))
		for i, fd := range pending {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		}
		ms := int(left / time.Millisecond)
		if ms < 1 {
			ms = 1
		}
		n, err := unix.Poll(pfds, ms)
		if err != nil && err != unix.EINTR {
			return pending
		}
		if n <= 0 {
			continue
		}
		var still []int
		for i, p := range pfds {
			if p.Revents == 0 {
				still = append(still, pending[i])
			}
		}
		pending = still
	}
	return nil
}

// exitCode turns a wait status into a shell-style exit code.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
