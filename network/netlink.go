package network

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// retryDump runs a netlink dump again while the kernel reports that it was
// interrupted by a concurrent change.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		res []T
		err error
	)
	for range 5 {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, err
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// handle is a *netlink.Handle held as an unsafe.Pointer. Bridge and Macvlan
// are used through the Driver interface, and the linker treats every type
// reachable from a type converted to an interface as converted too; with
// text/template in the binary (MethodByName: the CLI's --format) it then
// keeps every exported method of such a type. A *netlink.Handle field so
// kept all of netlink's API (devlink, xfrm, rdma, conntrack, ...): 900 kB,
// which took the static amd64 binary over its 25 MiB budget. Behind an
// unsafe.Pointer only the methods pirun calls are linked.
type handle struct{ p unsafe.Pointer }

func newHandle(h *netlink.Handle) handle { return handle{unsafe.Pointer(h)} }

func (h handle) get() *netlink.Handle { return (*netlink.Handle)(h.p) }

// inHost runs f on a thread locked into the bridge's host namespace, so the
// programs it runs (iptables) and the /proc/sys/net files it opens are the
// host's, whatever namespace the calling thread is in.
func (b *Bridge) inHost(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		cur, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer cur.Close()
		if err := netns.Set(b.hostNS); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter host network namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(cur); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave host network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// randomMAC is a random unicast, locally administered address.
func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^1 | 2
	return mac
}

// validIfName checks a Linux interface name.
func validIfName(name string) error {
	if name == "" || len(name) > unix.IFNAMSIZ-1 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("%q is not a valid interface name: %w", name, ErrInvalidConfig)
	}
	return nil
}
