package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pirun/pirun/internal/fsutil"
)

// The neighbour (ARP) table's garbage-collection thresholds. The table is
// shared by all network namespaces and its defaults (128/512/1024) are too
// small for a thousand containers on one bridge. Only the initial network
// namespace shows these files; elsewhere pirun leaves them alone.
var neighKeys = [3]string{
	"net/ipv4/neigh/default/gc_thresh1",
	"net/ipv4/neigh/default/gc_thresh2",
	"net/ipv4/neigh/default/gc_thresh3",
}

// neighWant returns the thresholds n allocations need: gc_thresh3 at least
// 2n+256 (each container's entry on the host and the gateway's in the
// container), gc_thresh2 at least ¾ of that, gc_thresh1 unchanged. It
// never lowers a value.
func neighWant(cur [3]int, n int) [3]int {
	t3 := 2*n + 256
	return [3]int{cur[0], max(cur[1], t3*3/4), max(cur[2], t3)}
}

// sysctlChange is one sysctl pirun raised: its value before pirun first
// raised it and the value pirun set last.
type sysctlChange struct {
	Original int `json:"original"`
	Set      int `json:"set"`
}

func readSysctl(dir, key string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, key))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

func writeSysctl(dir, key string, v int) error {
	return os.WriteFile(filepath.Join(dir, key), []byte(strconv.Itoa(v)), 0o644)
}

func (b *Bridge) readSysctlRecord() (map[string]sysctlChange, error) {
	rec := map[string]sysctlChange{}
	data, err := os.ReadFile(filepath.Join(b.dir, sysctlFile))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", sysctlFile, err)
	}
	return rec, nil
}

// raiseNeigh raises the neighbour thresholds for n allocations, recording
// each original value once so that restoreNeigh can put it back.
func (b *Bridge) raiseNeigh(n int) error {
	err := b.inHost(func() error {
		var cur [3]int
		for i, k := range neighKeys {
			v, err := readSysctl(b.sysctlDir, k)
			if errors.Is(err, fs.ErrNotExist) {
				b.log.Debug("neighbour thresholds not visible in this network namespace, left alone", "network", b.name)
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", k, err)
			}
			cur[i] = v
		}
		want := neighWant(cur, n)
		if want == cur {
			return nil
		}
		rec, err := b.readSysctlRecord()
		if err != nil {
			return err
		}
		for i, k := range neighKeys {
			if want[i] == cur[i] {
				continue
			}
			c, ok := rec[k]
			if !ok {
				c.Original = cur[i]
			}
			c.Set = want[i]
			rec[k] = c
		}
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		// Record first: a crash after the write still restores.
		if err := fsutil.WriteFileAtomic(filepath.Join(b.dir, sysctlFile), data, 0o600); err != nil {
			return fmt.Errorf("record sysctls: %w", err)
		}
		for i, k := range neighKeys {
			if want[i] == cur[i] {
				continue
			}
			if err := writeSysctl(b.sysctlDir, k, want[i]); err != nil {
				return fmt.Errorf("raise %s to %d: %w", k, want[i], err)
			}
			b.log.Debug("raised sysctl", "network", b.name, "key", k, "from", cur[i], "to", want[i], "allocations", n)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("network %s: neighbour table: %w", b.name, err)
	}
	return nil
}

// restoreNeigh puts back the values recorded by raiseNeigh, except where
// someone else has changed a value since pirun set it.
func (b *Bridge) restoreNeigh() error {
	rec, err := b.readSysctlRecord()
	if err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	if len(rec) == 0 {
		return nil
	}
	err = b.inHost(func() error {
		var errs []error
		for _, k := range neighKeys {
			c, ok := rec[k]
			if !ok {
				continue
			}
			cur, err := readSysctl(b.sysctlDir, k)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", k, err))
				continue
			}
			if cur != c.Set {
				b.log.Debug("sysctl changed by someone else, left alone", "network", b.name, "key", k, "value", cur)
				continue
			}
			if err := writeSysctl(b.sysctlDir, k, c.Original); err != nil {
				errs = append(errs, fmt.Errorf("restore %s to %d: %w", k, c.Original, err))
				continue
			}
			b.log.Debug("restored sysctl", "network", b.name, "key", k, "to", c.Original)
		}
		if len(errs) > 0 {
			return errors.Join(errs...) // keep the record for the next try
		}
		if err := os.Remove(filepath.Join(b.dir, sysctlFile)); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("network %s: neighbour table: %w", b.name, err)
	}
	return nil
}
