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
		first, last string
	}{
		{"10.123.0.0/16", 65533, "10.123.0.2", "10.123.255.254"},
		{"10.0.0.0/30", 1, "10.0.0.2", "10.0.0.2"},
		{"172.16.4.0/24", 253, "172.16.4.2", "172.16.4.254"},
	} {
		r := newAddrRange(netip.MustParsePrefix(tc.prefix))
		if r.size() != tc.size || addrOf(r.first).String() != tc.first || addrOf(r.last).String() != tc.last {
			t.Errorf("%s: size %d, %s..%s; want %d, %s..%s", tc.prefix, r.size(), addrOf(r.first), addrOf(r.last), tc.size, tc.first, tc.last)
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
