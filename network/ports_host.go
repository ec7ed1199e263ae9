package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pirun/pirun/internal/fsutil"
)

// What the published ports need from the host besides their DNAT rules,
// per bridge that has containers behind a published port.
var (
	// postroutingChain (nat) masquerades what the containers could not
	// answer otherwise: connections from 127.0.0.0/8, and connections from
	// the bridge's own subnet (a container to a published port).
	postroutingChain = hookedChain{
		table: "nat", name: "PIRUN-POSTROUTING",
		jumps: []jump{{from: "POSTROUTING", spec: []string{"-j", "PIRUN-POSTROUTING"}}},
	}
	// inputGuardChain (filter) holds, for each bridge where pirun turned
	// route_localnet on, a rule dropping packets from the bridge to
	// 127.0.0.0/8 that are not replies: route_localnet would otherwise let
	// a container reach the host's loopback services (CVE-2020-8558).
	inputGuardChain = hookedChain{
		table: "filter", name: "PIRUN-PORTS-INPUT", first: true,
		jumps: []jump{{from: "INPUT", spec: []string{"-j", "PIRUN-PORTS-INPUT"}}},
	}
	// forwardGuardChain (filter) holds, for each bridge where pirun turned
	// forwarding on, a rule dropping what the bridge would now forward to
	// elsewhere other than published-port traffic: the host still does not
	// route the containers' traffic to other networks.
	forwardGuardChain = hookedChain{
		table: "filter", name: "PIRUN-PORTS-FORWARD", first: true,
		jumps: []jump{{from: "FORWARD", spec: []string{"-j", "PIRUN-PORTS-FORWARD"}}},
	}
	hostChains = []hookedChain{postroutingChain, inputGuardChain, forwardGuardChain}
)

// hostRecord is what pirun added to the host for the published ports:
// sysctls it raised (key → original and set value) and rules it added.
// Each addition is recorded before it is made.
type hostRecord struct {
	Sysctls map[string]sysctlChange `json:"sysctls,omitempty"`
	Rules   []hostRule              `json:"rules,omitempty"`
}

type hostRule struct {
	Table string   `json:"table"`
	Chain string   `json:"chain"`
	Spec  []string `json:"spec"`
}

func (r hostRule) equal(o hostRule) bool {
	return r.Table == o.Table && r.Chain == o.Chain && slices.Equal(r.Spec, o.Spec)
}

func localnetKey(bridge string) string   { return "net/ipv4/conf/" + bridge + "/route_localnet" }
func forwardingKey(bridge string) string { return "net/ipv4/conf/" + bridge + "/forwarding" }

func (b *Bridge) readHostRecord() (*hostRecord, error) {
	rec := &hostRecord{Sysctls: map[string]sysctlChange{}}
	data, err := os.ReadFile(filepath.Join(b.portsDir(), hostRecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", hostRecordFile, err)
	}
	if rec.Sysctls == nil {
		rec.Sysctls = map[string]sysctlChange{}
	}
	return rec, nil
}

func (b *Bridge) writeHostRecord(rec *hostRecord) error {
	p := filepath.Join(b.portsDir(), hostRecordFile)
	if len(rec.Sysctls) == 0 && len(rec.Rules) == 0 {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(p, data, 0o600)
}

// reconcileHost makes the host's setup for the published ports match
// recs, the ports that remain: it adds what they need (rules first, so
// that a guard is in place before the sysctl it guards is raised), then
// restores the sysctls and removes the rules that no port needs any more,
// with pirun's chains once they are empty. Call it under the ports lock.
func (b *Bridge) reconcileHost(recs []*portRecord) error {
	loopback := map[string]bool{}        // bridges behind a port reachable at 127.0.0.1
	hairpin := map[string]netip.Prefix{} // bridges behind a port reachable from containers, and their subnets
	for _, r := range recs {
		for _, t := range r.Targets {
			if r.Port.fromLoopback() {
				loopback[t.Network] = true
			}
			if r.Port.fromBridge() {
				hairpin[t.Network] = t.Address.Masked()
			}
		}
	}
	want := map[string]bool{}
	for br := range loopback {
		want[localnetKey(br)] = true
	}
	for br := range hairpin {
		want[forwardingKey(br)] = true
	}

	err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		rec, err := b.readHostRecord()
		if err != nil {
			return err
		}
		// The sysctls to raise now: wanted, not 1 and not raised by pirun
		// already (a recorded one that someone set back is raised again).
		var raise []string
		for _, k := range slices.Sorted(maps.Keys(want)) {
			v, err := readSysctl(b.sysctlDir, k)
			if err != nil {
				return fmt.Errorf("read %s: %w", k, err)
			}
			if v != 1 {
				raise = append(raise, k)
			}
		}
		held := func(k string) bool { _, ok := rec.Sysctls[k]; return want[k] && (ok || slices.Contains(raise, k)) }

		var rules []hostRule
		for _, br := range slices.Sorted(maps.Keys(loopback)) {
			rules = append(rules, hostRule{"nat", postroutingChain.name, []string{"-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"}})
			if held(localnetKey(br)) {
				rules = append(rules, hostRule{"filter", inputGuardChain.name, []string{"!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-i", br,
					"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"}})
			}
		}
		for _, br := range slices.Sorted(maps.Keys(hairpin)) {
			rules = append(rules, hostRule{"nat", postroutingChain.name, []string{"-s", hairpin[br].String(), "-o", br,
				"-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}})
			if held(forwardingKey(br)) {
				rules = append(rules, hostRule{"filter", forwardGuardChain.name, []string{"-i", br, "!", "-o", br,
					"-m", "conntrack", "!", "--ctstate", "DNAT", "-j", "DROP"}})
			}
		}

		// 1. Rules first.
		for _, r := range rules {
			if !slices.ContainsFunc(rec.Rules, r.equal) {
				rec.Rules = append(rec.Rules, r)
				if err := b.writeHostRecord(rec); err != nil {
					return fmt.Errorf("record rules: %w", err)
				}
			}
			for _, c := range hostChains {
				if c.name == r.Chain {
					if err := ensureHooked(ipt, c); err != nil {
						return err
					}
				}
			}
			if err := ipt.AppendUnique(r.Table, r.Chain, r.Spec...); err != nil {
				return fmt.Errorf("add rule %q to %s: %w", strings.Join(r.Spec, " "), r.Chain, err)
			}
		}
		// 2. Then the sysctls.
		for _, k := range raise {
			c, ok := rec.Sysctls[k]
			if !ok {
				v, err := readSysctl(b.sysctlDir, k)
				if err != nil {
					return fmt.Errorf("read %s: %w", k, err)
				}
				c.Original = v
			}
			c.Set = 1
			rec.Sysctls[k] = c
			if err := b.writeHostRecord(rec); err != nil {
				return fmt.Errorf("record sysctls: %w", err)
			}
			if err := writeSysctl(b.sysctlDir, k, 1); err != nil {
				return fmt.Errorf("raise %s to 1: %w", k, err)
			}
			b.log.Debug("raised sysctl", "key", k, "from", c.Original, "to", 1)
		}
		// 3. Restore what no port needs any more: sysctls, then rules.
		var errs []error
		for _, k := range slices.Sorted(maps.Keys(rec.Sysctls)) {
			if want[k] {
				continue
			}
			c := rec.Sysctls[k]
			switch v, err := readSysctl(b.sysctlDir, k); {
			case errors.Is(err, fs.ErrNotExist):
				// The bridge is gone, and its setting with it.
			case err != nil:
				errs = append(errs, fmt.Errorf("read %s: %w", k, err))
				continue
			case v != c.Set:
				b.log.Debug("sysctl changed by someone else, left alone", "key", k, "value", v)
			default:
				if err := writeSysctl(b.sysctlDir, k, c.Original); err != nil {
					errs = append(errs, fmt.Errorf("restore %s to %d: %w", k, c.Original, err))
					continue
				}
				b.log.Debug("restored sysctl", "key", k, "to", c.Original)
			}
			delete(rec.Sysctls, k)
			if err := b.writeHostRecord(rec); err != nil {
				errs = append(errs, fmt.Errorf("record sysctls: %w", err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...) // keep the guards of what is still raised
		}
		kept := rec.Rules[:0]
		for _, r := range rec.Rules {
			if slices.ContainsFunc(rules, r.equal) {
				kept = append(kept, r)
				continue
			}
			if err := ipt.Delete(r.Table, r.Chain, r.Spec...); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("delete rule %q from %s: %w", strings.Join(r.Spec, " "), r.Chain, err))
				kept = append(kept, r)
			}
		}
		rec.Rules = kept
		if err := b.writeHostRecord(rec); err != nil {
			errs = append(errs, fmt.Errorf("record rules: %w", err))
		}
		for _, c := range hostChains {
			if !slices.ContainsFunc(rec.Rules, func(r hostRule) bool { return r.Chain == c.name }) {
				errs = append(errs, removeHookedIfEmpty(ipt, c))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("published ports: host setup: %w", err)
	}
	return nil
}
