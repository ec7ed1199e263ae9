package network

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// forwardChain is pirun's chain in the filter table, jumped to from the
// top of FORWARD. It holds two rules per bridge: -i <bridge> -j ACCEPT and
// -o <bridge> -j ACCEPT.
const forwardChain = "PIRUN-FORWARD"

func forwardRules(bridge string) [][]string {
	return [][]string{
		{"-i", bridge, "-j", "ACCEPT"},
		{"-o", bridge, "-j", "ACCEPT"},
	}
}

var jumpRule = []string{"-j", forwardChain}

// lockChain serializes the changes to PIRUN-FORWARD of every pirun process
// on the host, whatever its state directory: the chain is shared by all
// networks, each of which holds only its own lock, and with iptables-nft a
// network deleting the chain it saw empty deletes the rules another one
// has just added. The lock is an flock on the iptables binary itself, which
// every pirun runs and nothing else locks, so no lock file is left on the
// host. Call it inside inHost.
func lockChain() (unlock func(), err error) {
	path, err := exec.LookPath("iptables")
	if err == nil {
		path, err = filepath.EvalSymlinks(path)
	}
	if err == nil {
		unlock, err = lockExisting(path, time.Minute)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", forwardChain, err)
	}
	return unlock, nil
}

// iptablesHandle returns go-iptables' handle, made on first use. Call it
// inside inHost.
func (b *Bridge) iptablesHandle() (*iptables.IPTables, error) {
	b.iptMu.Lock()
	defer b.iptMu.Unlock()
	if b.ipt == nil {
		ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(10))
		if err != nil {
			return nil, fmt.Errorf("iptables: %w", err)
		}
		b.ipt = ipt
	}
	return b.ipt, nil
}

func isNotExist(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}

// ensureIptables makes sure PIRUN-FORWARD exists, accepts the bridges'
// traffic and is jumped to from FORWARD, once, at position 1.
//
// The chain is shared by every network of the host: changes to it hold
// lockChain. A step that fails anyway (someone else changed the chain)
// starts over; each step is idempotent.
//
// Chains are checked with ChainExists: iptables-nft 1.8.9 answers -S on a
// missing chain with "incompatible", not "no such chain".
func (b *Bridge) ensureIptables(bridges []string) error {
	err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		unlock, err := lockChain()
		if err != nil {
			return err
		}
		defer unlock()
		for attempt := 1; ; attempt++ {
			err := ensureForward(ipt, bridges)
			if err == nil || attempt == 5 {
				return err
			}
			b.log.Debug("iptables chain changed meanwhile, again", "network", b.name, "chain", forwardChain, "error", err)
		}
	})
	if err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	return nil
}

func ensureForward(ipt *iptables.IPTables, bridges []string) error {
	ok, err := ipt.ChainExists("filter", forwardChain)
	if err != nil {
		return fmt.Errorf("look up chain %s: %w", forwardChain, err)
	}
	if !ok {
		if err := ipt.NewChain("filter", forwardChain); err != nil {
			// Another network may have made it meanwhile.
			if ok, _ := ipt.ChainExists("filter", forwardChain); !ok {
				return fmt.Errorf("create chain %s: %w", forwardChain, err)
			}
		}
	}
	for _, br := range bridges {
		for _, spec := range forwardRules(br) {
			if err := ipt.AppendUnique("filter", forwardChain, spec...); err != nil {
				return fmt.Errorf("add rule %q to %s: %w", strings.Join(spec, " "), forwardChain, err)
			}
		}
	}
	return ensureJump(ipt)
}

func ensureJump(ipt *iptables.IPTables) error {
	ok, err := ipt.Exists("filter", "FORWARD", jumpRule...)
	if err != nil {
		return fmt.Errorf("check jump to %s: %w", forwardChain, err)
	}
	if !ok {
		if err := ipt.Insert("filter", "FORWARD", 1, jumpRule...); err != nil {
			return fmt.Errorf("add jump to %s: %w", forwardChain, err)
		}
	}
	return nil
}

// removeIptables removes the bridges' rules, and the chain and its jump
// when no other bridge has rules left in it. What is gone is success.
//
// It holds lockChain; should the chain change anyway (a program other than
// pirun), the decision is made again until it holds: rules left mean the
// chain is in use and keeps its jump, none mean jump and chain go.
func (b *Bridge) removeIptables(bridges []string) error {
	if err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
		unlock, err := lockChain()
		if err != nil {
			return err
		}
		defer unlock()
		ok, err := ipt.ChainExists("filter", forwardChain)
		if err != nil {
			return fmt.Errorf("look up chain %s: %w", forwardChain, err)
		}
		var errs []error
		if ok {
			for _, br := range bridges {
				for _, spec := range forwardRules(br) {
					if err := ipt.Delete("filter", forwardChain, spec...); err != nil && !isNotExist(err) {
						errs = append(errs, fmt.Errorf("delete rule %q from %s: %w", strings.Join(spec, " "), forwardChain, err))
					}
				}
			}
		}
		for attempt := 1; ; attempt++ {
			if ok {
				rules, err := ipt.List("filter", forwardChain)
				if err != nil {
					if ok, _ = ipt.ChainExists("filter", forwardChain); ok {
						return errors.Join(append(errs, fmt.Errorf("list chain %s: %w", forwardChain, err))...)
					}
				} else if len(rules) > 1 { // "-N PIRUN-FORWARD" and another network's rules
					err := ensureJump(ipt)
					if err != nil {
						if ok, _ = ipt.ChainExists("filter", forwardChain); !ok {
							err = nil // that network removed it meanwhile
						}
					}
					return errors.Join(append(errs, err)...)
				}
			}
			if err := ipt.Delete("filter", "FORWARD", jumpRule...); err != nil && !isNotExist(err) {
				return errors.Join(append(errs, fmt.Errorf("delete jump to %s: %w", forwardChain, err))...)
			}
			if !ok {
				return errors.Join(errs...)
			}
			err := ipt.DeleteChain("filter", forwardChain)
			if err == nil || isNotExist(err) {
				b.log.Debug("deleted iptables chain", "network", b.name, "chain", forwardChain)
				return errors.Join(errs...)
			}
			if attempt == 3 {
				return errors.Join(append(errs, fmt.Errorf("delete chain %s: %w", forwardChain, err))...)
			}
			// Changed meanwhile by another network: look again.
		}
	}); err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	return nil
}
