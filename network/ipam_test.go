package network

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func collect(r addrRange, hint netip.Addr) []string {
	var out []string
	for a := range r.candidates(hint) {
		out = append(out, a.String())
	}
	return out
}

func TestCandidates(t *testing.T) {
	r := newAddrRange(netip.MustParsePrefix("10.1.2.0/29"))
	if r.size() != 5 {
		t.Fatalf("size of /29 = %d, want 5 (8 minus network, gateway, broadcast)", r.size())
	}
	all := []string{"10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"}
	for _, tc := range []struct {
		name, hint string
		want       []string
	}{
		{"no hint", "", all},
		{"hint mid-range", "10.1.2.4", []string{"10.1.2.5", "10.1.2.6", "10.1.2.2", "10.1.2.3", "10.1.2.4"}},
		{"hint at the end wraps", "10.1.2.6", all},
		{"hint on the gateway", "10.1.2.1", all},
		{"hint on broadcast", "10.1.2.7", all},
		{"hint outside the subnet", "192.168.0.9", all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hint netip.Addr
			if tc.hint != "" {
				hint = netip.MustParseAddr(tc.hint)
			}
			if got := collect(r, hint); !slices.Equal(got, tc.want) {
				t.Errorf("candidates after %q = %v, want %v", tc.hint, got, tc.want)
			}
		})
	}
}

func TestAddrRangeSizes(t *testing.T) {
	for _, tc := range []struct {
		prefix      string
		size        int
		slices      int
		first, last string
	}{
		{"10.123.0.0/16", 64 * 1021, 64, "10.123.0.2", "10.123.255.254"},
		{"10.0.0.0/21", 2 * 1021, 2, "10.0.0.2", "10.0.7.254"},
		{"10.0.0.0/22", 1021, 1, "10.0.0.2", "10.0.3.254"},
		{"10.0.0.0/30", 1, 1, "10.0.0.2", "10.0.0.2"},
		{"172.16.4.0/24", 253, 1, "172.16.4.2", "172.16.4.254"},
	} {
		r := newAddrRange(netip.MustParsePrefix(tc.prefix))
		all := collect(r, netip.Addr{})
		if r.size() != tc.size || r.slices != tc.slices || len(all) != tc.size || all[0] != tc.first || all[len(all)-1] != tc.last {
			t.Errorf("%s: size %d, %d slices, %d candidates %s..%s; want %d, %d, %s..%s",
				tc.prefix, r.size(), r.slices, len(all), all[0], all[len(all)-1], tc.size, tc.slices, tc.first, tc.last)
		}
	}
}

func TestSlices(t *testing.T) {
	r := newAddrRange(netip.MustParsePrefix("10.123.0.0/16"))
	for k, want := range map[int][2]string{0: {"10.123.0.0/22", "10.123.0.1"}, 1: {"10.123.4.0/22", "10.123.4.1"}, 63: {"10.123.252.0/22", "10.123.252.1"}} {
		if p, gw := r.slicePrefix(k).String(), r.gateway(k).String(); p != want[0] || gw != want[1] {
			t.Errorf("slice %d: %s gateway %s, want %s gateway %s", k, p, gw, want[0], want[1])
		}
	}
	for addr, want := range map[string]struct {
		slice     int
		inSubnet  bool
		container bool
	}{
		"10.123.0.1":   {0, true, false}, // gateway of slice 0
		"10.123.3.254": {0, true, true},
		"10.123.3.255": {0, true, false}, // broadcast of slice 0
		"10.123.4.0":   {1, true, false}, // network of slice 1
		"10.123.4.1":   {1, true, false},
		"10.123.4.2":   {1, true, true},
		"10.124.0.2":   {0, false, false},
		"10.122.255.2": {0, false, false},
	} {
		a := netip.MustParseAddr(addr)
		k, ok := r.sliceOf(a)
		if ok != want.inSubnet || (ok && k != want.slice) || r.contains(a) != want.container {
			t.Errorf("%s: slice %d %v, container %v; want %d %v, %v", addr, k, ok, r.contains(a), want.slice, want.inSubnet, want.container)
		}
	}
	// Round-robin goes from one slice into the next, and wraps at the end.
	var got []string
	for a := range r.candidates(netip.MustParseAddr("10.123.3.253")) {
		if got = append(got, a.String()); len(got) == 3 {
			break
		}
	}
	if want := []string{"10.123.3.254", "10.123.4.2", "10.123.4.3"}; !slices.Equal(got, want) {
		t.Errorf("candidates across slices %v, want %v", got, want)
	}
	for a := range r.candidates(netip.MustParseAddr("10.123.255.254")) {
		if a.String() != "10.123.0.2" {
			t.Errorf("after the last address: %s, want 10.123.0.2", a)
		}
		break
	}
}

func TestBridgeNames(t *testing.T) {
	b, err := NewBridge(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for k, name := range map[int]string{0: "pirun0", 1: "pirun0-1", 63: "pirun0-63"} {
		if got := b.bridgeName(k); got != name {
			t.Errorf("bridgeName(%d) = %q, want %q", k, got, name)
		}
		if got, ok := b.sliceOfBridge(name); !ok || got != k {
			t.Errorf("sliceOfBridge(%q) = %d, %v", name, got, ok)
		}
	}
	for _, name := range []string{"pirun0-64", "pirun0-0", "pirun0-01", "pirun0-", "pirun01", "pirun1", "pirun0-x"} {
		if k, ok := b.sliceOfBridge(name); ok {
			t.Errorf("sliceOfBridge(%q) = %d, want not one of the network's bridges", name, k)
		}
	}
}

func TestNeighWant(t *testing.T) {
	def := [3]int{128, 512, 1024}
	for _, tc := range []struct {
		n    int
		cur  [3]int
		want [3]int
	}{
		{1, def, def},
		{200, def, def},
		{384, def, [3]int{128, 768, 1024}},
		{1000, def, [3]int{128, 1692, 2256}},
		{1023, def, [3]int{128, 1726, 2302}},
		{1000, [3]int{4096, 8192, 16384}, [3]int{4096, 8192, 16384}}, // never lowered
	} {
		if got := neighWant(tc.cur, tc.n); got != tc.want {
			t.Errorf("neighWant(%v, %d) = %v, want %v", tc.cur, tc.n, got, tc.want)
		}
	}
}

func TestBacklogWant(t *testing.T) {
	for _, tc := range []struct{ cur, perBridge, want int }{
		{1000, 10, 1000},
		{1000, 333, 1000},
		{1000, 500, 1500},
		{1000, 1021, 3063}, // a full bridge
		{5000, 1021, 5000}, // never lowered
	} {
		if got := backlogWant(tc.cur, tc.perBridge); got != tc.want {
			t.Errorf("backlogWant(%d, %d) = %d, want %d", tc.cur, tc.perBridge, got, tc.want)
		}
	}
}

func TestHostIfName(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if got := HostIfName(id); got != "pr0123456789" {
		t.Errorf("HostIfName = %q", got)
	}
	if got := HostIfName("abc"); got != "prabc" {
		t.Errorf("HostIfName(short) = %q", got)
	}
}

func TestNewBridgeRejectsBadConfig(t *testing.T) {
	for _, opts := range [][]Option{
		{WithSubnet(netip.MustParsePrefix("10.0.0.0/31"))},
		{WithSubnet(netip.MustParsePrefix("10.0.0.5/24"))},
		{WithSubnet(netip.MustParsePrefix("fd00::/64"))},
		{WithBridgeName("a-name-that-is-too-long")},
		{WithBridgeName("a/b")},
		// 64 bridges: the last, "pirun-network-63", is too long.
		{WithBridgeName("pirun-network"), WithSubnet(netip.MustParsePrefix("10.9.0.0/16"))},
	} {
		b, err := NewBridge(t.TempDir(), opts...)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewBridge: %v, want ErrInvalidConfig", err)
		}
		if b != nil {
			b.Close()
		}
	}
}
