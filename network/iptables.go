package network

import (
	"errors"
	"fmt"
	"strings"

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
// Chains are checked with ChainExists: iptables-nft 1.8.9 answers -S on a
// missing chain with "incompatible", not "no such chain".
func (b *Bridge) ensureIptables(bridges []string) error {
	err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
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
			} else {
				b.log.Debug("created iptables chain", "network", b.name, "chain", forwardChain)
			}
		}
		for _, br := range bridges {
			for _, spec := range forwardRules(br) {
				if err := ipt.AppendUnique("filter", forwardChain, spec...); err != nil {
					return fmt.Errorf("add rule %q to %s: %w", strings.Join(spec, " "), forwardChain, err)
				}
			}
		}
		if ok, err = ipt.Exists("filter", "FORWARD", jumpRule...); err != nil {
			return fmt.Errorf("check jump to %s: %w", forwardChain, err)
		}
		if !ok {
			if err := ipt.Insert("filter", "FORWARD", 1, jumpRule...); err != nil {
				return fmt.Errorf("add jump to %s: %w", forwardChain, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	return nil
}

// removeIptables removes the bridges' rules, and the chain and its jump
// when no other bridge has rules left in it. What is gone is success.
func (b *Bridge) removeIptables(bridges []string) error {
	if err := b.inHost(func() error {
		ipt, err := b.iptablesHandle()
		if err != nil {
			return err
		}
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
			rules, err := ipt.List("filter", forwardChain)
			if err != nil {
				return errors.Join(append(errs, fmt.Errorf("list chain %s: %w", forwardChain, err))...)
			}
			if len(rules) > 1 { // "-N PIRUN-FORWARD" and another network's rules
				return errors.Join(errs...)
			}
		}
		if err := ipt.Delete("filter", "FORWARD", jumpRule...); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("delete jump to %s: %w", forwardChain, err))
		}
		if ok {
			if err := ipt.DeleteChain("filter", forwardChain); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("delete chain %s: %w", forwardChain, err))
			} else {
				b.log.Debug("deleted iptables chain", "network", b.name, "chain", forwardChain)
			}
		}
		return errors.Join(errs...)
	}); err != nil {
		return fmt.Errorf("network %s: %w", b.name, err)
	}
	return nil
}
