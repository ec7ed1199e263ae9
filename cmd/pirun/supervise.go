package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/pirun/pirun/runtime"
)

// `pirun spawn --restart` hands the spawn to a supervisor: pirun itself,
// started as the hidden verb "supervise" in a session of its own. It
// starts the containers (so their inits are its children), reports back
// on its stdout, and then stays to reap and restart them (see
// runtime.Supervise). It is the only resident process pirun ever leaves,
// one per spawn group, and only with --restart. It exits once every
// container of its group is stopped or removed; killing it leaves the
// containers running and removable.

// superviseRequest is what the spawning pirun sends on the supervisor's stdin.
type superviseRequest struct {
	Config   runtime.Config `json:"config"`
	N        int            `json:"n"`
	Parallel int            `json:"parallel"`
}

// superviseReport is one line of the supervisor's stdout: progress, then
// the containers or the error.
type superviseReport struct {
	Done       int                  `json:"done,omitempty"`
	Total      int                  `json:"total,omitempty"`
	Containers []*runtime.Container `json:"containers,omitempty"`
	Error      string               `json:"error,omitempty"`
}

// spawnSupervised runs a spawn through a new supervisor process and
// returns its containers.
func spawnSupervised(ctx context.Context, g *globals, req superviseRequest, progress func(done, total int)) ([]*runtime.Container, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("supervisor: find pirun's binary: %w", err)
	}
	logDir := filepath.Join(g.state, "supervisors")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	logf, err := os.CreateTemp(logDir, "starting-*.log")
	if err != nil {
		return nil, fmt.Errorf("supervisor: log: %w", err)
	}
	defer logf.Close()
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	args := []string{"--root", g.root, "--state", g.state, "--bridge", g.bridge, "--subnet", g.subnet}
	if g.configPath != "" {
		args = append(args, "--config", g.configPath)
	}
	if g.debug {
		args = append(args, "--debug")
	}
	cmd := exec.Command(exe, append(args, "supervise", "--log", logf.Name())...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stderr = logf
	cmd.Dir = "/"
	// A session of its own: no terminal's signals reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("supervisor: start: %w", err)
	}
	// If this pirun is interrupted, the supervisor rolls the spawn back.
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(unix.SIGINT) })
	defer stop()
	var final *superviseReport
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var r superviseReport
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		if r.Containers != nil || r.Error != "" {
			final = &r
			break
		}
		if progress != nil && r.Total > 0 {
			progress(r.Done, r.Total)
		}
	}
	if final == nil || final.Error != "" {
		// The supervisor failed: it exits, and says why.
		_ = cmd.Wait()
		tail, _ := os.ReadFile(logf.Name())
		os.Remove(logf.Name())
		if final != nil {
			return nil, errors.New(final.Error)
		}
		return nil, fmt.Errorf("supervisor exited without a report: %s", lastLine(tail))
	}
	// It lives on, detached: not waited for.
	_ = cmd.Process.Release()
	return final.Containers, nil
}

func newSuperviseCmd(g *globals) *cobra.Command {
	var logPath string
	cmd := &cobra.Command{
		Use:    "supervise",
		Short:  "Spawn containers read as JSON on stdin and keep them running (started by spawn --restart)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var req superviseRequest
			if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
				return fmt.Errorf("supervise: read the request: %w", err)
			}
			// Orphans below it (a container's children whose init
			// died) are reparented to it and reaped, not to the host's init.
			if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
				return fmt.Errorf("supervise: become a subreaper: %w", err)
			}
			ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
			defer cancel()
			rt, err := g.runtime(runtime.WithWorkers(req.Parallel))
			if err != nil {
				return report(superviseReport{Error: err.Error()}, err)
			}
			enc := json.NewEncoder(os.Stdout)
			cs, err := rt.Spawn(ctx, req.Config, req.N, func(done, total int) {
				_ = enc.Encode(superviseReport{Done: done, Total: total})
			})
			if err != nil {
				return report(superviseReport{Error: err.Error()}, err)
			}
			if err := enc.Encode(superviseReport{Containers: cs}); err != nil {
				return err
			}
			os.Stdout.Close()
			// Name the log after the supervisor, for people and scripts.
			if logPath != "" {
				named := filepath.Join(filepath.Dir(logPath), strconv.Itoa(os.Getpid())+".log")
				if os.Rename(logPath, named) == nil {
					logPath = named
				}
			}
			err = rt.Supervise(ctx)
			if err == nil && logPath != "" {
				os.Remove(logPath) // all done: nothing to keep
			}
			if errors.Is(err, context.Canceled) {
				return nil // told to go: the containers stay
			}
			return err
		},
	}
	cmd.Flags().StringVar(&logPath, "log", "", "the supervisor's log file, removed when it ends")
	return cmd
}

// report writes a final report and returns err.
func report(r superviseReport, err error) error {
	_ = json.NewEncoder(os.Stdout).Encode(r)
	return err
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
