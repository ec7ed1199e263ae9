package network

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestInspectPrune: two bridges, containers that exist and others that are
// gone, a stray veth, a foreign link on a bridge, raised sysctls. Prune
// takes what no container uses and nothing else.
func TestInspectPrune(t *testing.T) {
	inTestNS(t, func(netns.NsHandle) {
		ctx := context.Background()
		dir := t.TempDir()
		fake := t.TempDir()
		for i, k := range neighKeys {
			os.MkdirAll(filepath.Dir(filepath.Join(fake, k)), 0o755)
			writeSysctl(fake, k, [3]int{128, 512, 1024}[i])
		}
		b := newBridge(t, dir, func(o *options) { o.sysctlDir = fake })
		if _, err := b.Prune(ctx, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Prune without knowing the containers: %v, want ErrInvalidConfig", err)
		}

		kept, err := b.Allocate(ctx, testIDs("a", 2)) // pirun0
		if err != nil {
			t.Fatal(err)
		}
		// The next addresses go to the second bridge.
		if err := os.WriteFile(filepath.Join(dir, "pirun0", hintFile), []byte("10.123.3.254"), 0o600); err != nil {
			t.Fatal(err)
		}
		lost, err := b.Allocate(ctx, testIDs("c", 2)) // pirun0-1
		if err != nil {
			t.Fatal(err)
		}
		if lost[0].Network != "pirun0-1" {
			t.Fatalf("second allocation on %s, want pirun0-1", lost[0].Network)
		}
		for _, ep := range []Endpoint{kept[0], lost[0]} {
			ns, path := newNS(t)
			defer ns.Close()
			if err := b.Attach(ctx, ep, path); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.raiseSysctls(1000, 1); err != nil {
			t.Fatal(err)
		}
		br0, _ := netlink.LinkByName("pirun0")
		br1, _ := netlink.LinkByName("pirun0-1")
		addVeth := func(name string, master netlink.Link) {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = name
			attrs.MasterIndex = master.Attrs().Index
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name + "p"}); err != nil {
				t.Fatal(err)
			}
		}
		addVeth("pr00000000ff", br0) // pirun's name, no allocation: a leftover
		addVeth("foreign0", br1)     // not pirun's

		exists := map[string]bool{kept[0].ContainerID: true, kept[1].ContainerID: true}
		inUse := func(id string) bool { return exists[id] }
		info, err := b.Inspect(ctx, inUse)
		if err != nil {
			t.Fatal(err)
		}
		want := []BridgeInfo{
			{Name: "pirun0", Subnet: netip.MustParsePrefix("10.123.0.0/22"), Gateway: netip.MustParseAddr("10.123.0.1"), Containers: 2, Exists: true, Ports: 2},
			{Name: "pirun0-1", Subnet: netip.MustParsePrefix("10.123.4.0/22"), Gateway: netip.MustParseAddr("10.123.4.1"), Containers: 2, Unused: 2, Exists: true, Ports: 2},
		}
		if info.InUse != 4 || info.Unused != 2 || info.Capacity != 64*1021 || !slices.Equal(info.Bridges, want) {
			t.Errorf("Inspect: %+v, want 4 in use, 2 unused, bridges %+v", info, want)
		}
		if len(info.Rules) != 4 || len(info.Sysctls) != 2 || info.Sysctls[0].Original != 512 || info.Sysctls[1].Current != 2256 {
			t.Errorf("Inspect: rules %q, sysctls %+v", info.Rules, info.Sysctls)
		}

		// The gone containers' addresses and veth, and the leftover veth,
		// go; pirun0-1 stays while a foreign link is attached to it.
		rep, err := b.Prune(ctx, inUse)
		if err != nil {
			t.Fatal(err)
		}
		wantAddrs := []netip.Addr{lost[0].Address.Addr(), lost[1].Address.Addr()}
		if !slices.Equal(rep.Addresses, wantAddrs) || !slices.Equal(rep.Links, []string{"pr00000000ff"}) || len(rep.Kept) != 1 || len(rep.Rules) != 0 {
			t.Errorf("first Prune: %+v; want addresses %v, link pr00000000ff, pirun0-1 kept", rep, wantAddrs)
		}
		if _, err := netlink.LinkByName(lost[0].HostIf); err == nil {
			t.Errorf("veth %s of a gone container left", lost[0].HostIf)
		}
		if _, err := netlink.LinkByName(kept[0].HostIf); err != nil {
			t.Errorf("veth %s of an existing container deleted", kept[0].HostIf)
		}

		if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}}); err != nil {
			t.Fatal(err)
		}
		rep, err = b.Prune(ctx, inUse)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rep.Links, []string{"pirun0-1"}) || len(rep.Rules) != 2 || len(rep.Addresses) != 0 || len(rep.Sysctls) != 0 {
			t.Errorf("second Prune: %+v; want pirun0-1 and its 2 rules", rep)
		}
		if rules, jump := iptablesState(t); len(rules) != 3 || !jump {
			t.Errorf("iptables after the second Prune: %q, %v", rules, jump)
		}
		if got := len(allocations(t, dir, "pirun0")); got != 2 {
			t.Errorf("%d allocations left, want the 2 in use", got)
		}

		// Now none exists: everything goes, sysctls restored.
		rep, err = b.Prune(ctx, func(string) bool { return false })
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Addresses) != 2 || !slices.Contains(rep.Links, "pirun0") || len(rep.Rules) != 2 || len(rep.Sysctls) != 2 {
			t.Errorf("last Prune: %+v", rep)
		}
		for i, k := range neighKeys {
			if v, _ := readSysctl(fake, k); v != [3]int{128, 512, 1024}[i] {
				t.Errorf("%s = %d after prune", k, v)
			}
		}
		assertClean(t, dir, "pirun0")
		if rep, err := b.Prune(ctx, inUse); err != nil || len(rep.Links)+len(rep.Addresses)+len(rep.Rules) != 0 {
			t.Errorf("Prune of nothing: %+v, %v", rep, err)
		}
	})
}
