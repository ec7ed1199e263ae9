package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

// backlogKey is the length of each CPU's queue of received packets. A
// broadcast on a bridge (an ARP request from the host) is copied to every
// port, and each copy a veth delivers goes into the sending CPU's queue at
// once: past netdev_max_backlog (default 1,000) copies are dropped, always
// those to the bridge's oldest ports, which then never answer. Like the
// neighbour thresholds, only the initial network namespace shows it.
const backlogKey = "net/core/netdev_max_backlog"

// backlogWant returns the queue length for perBridge containers on the
// fullest bridge: three times that (one broadcast's copies and room for two
// more in flight), never lower than cur.
func backlogWant(cur, perBridge int) int { return max(cur, 3*perBridge) }

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

// raiseSysctls raises the neighbour thresholds for n allocations and the
// backlog for perBridge containers on the fullest bridge, recording each
// original value once so that restoreSysctls can put it back. A sysctl not
// visible in the host namespace is left alone.
func (b *Bridge) raiseSysctls(n, perBridge int) error {
	err := b.inHost(func() error {
		cur, want := map[string]int{}, map[string]int{}
		var nc [3]int
		visible := true
		for i, k := range neighKeys {
			v, err := readSysctl(b.sysctlDir, k)
			if errors.Is(err, fs.ErrNotExist) {
				visible = false
				break
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", k, err)
			}
			nc[i] = v
		}
		if visible {
			w := neighWant(nc, n)
			for i, k := range neighKeys {
				cur[k], want[k] = nc[i], w[i]
			}
		}
		switch v, err := readSysctl(b.sysctlDir, backlogKey); {
		case err == nil:
			cur[backlogKey], want[backlogKey] = v, backlogWant(v, perBridge)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("read %s: %w", backlogKey, err)
		}
		var raise []string
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if want[k] != cur[k] {
				raise = append(raise, k)
			}
		}
		if len(raise) == 0 {
			return nil
		}
		rec, err := b.readSysctlRecord()
		if err != nil {
			return err
		}
		for _, k := range raise {
			c, ok := rec[k]
			if !ok {
				c.Original = cur[k]
			}
			c.Set = want[k]
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
		for _, k := range raise {
			if err := writeSysctl(b.sysctlDir, k, want[k]); err != nil {
				return fmt.Errorf("raise %s to %d: %w", k, want[k], err)
			}
			b.log.Debug("raised sysctl", "network", b.name, "key", k, "from", cur[k], "to", want[k], "allocations", n, "per_bridge", perBridge)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("network %s: sysctls: %w", b.name, err)
	}
	return nil
}

// restoreSysctls puts back the values recorded by raiseSysctls, except
// where someone else has changed a value since pirun set it.
func (b *Bridge) restoreSysctls() error {
	rec, err := b.readSysctlRecord()
	if err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	if len(rec) == 0 {
		return nil
	}
	err = b.inHost(func() error {
		var errs []error
		for _, k := range slices.Sorted(maps.Keys(rec)) {
			c := rec[k]
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
		return fmt.Errorf("network %s: sysctls: %w", b.name, err)
	}
	return nil
}
