package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrPortInUse is returned when a host port to publish is already published
// by pirun or taken by a socket of the host.
var ErrPortInUse = errors.New("host port in use")

// Protocols of published ports.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// PortMapping is one published port: connections to HostIP:HostPort on
// the host go to ContainerPort of the containers. It is serialized in the
// container's state and in the network's.
type PortMapping struct {
	// HostIP is the host address the port is published on; the zero
	// value (or 0.0.0.0) is every address of the host. IPv4 only.
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	HostPort      uint16     `json:"host_port"`
	ContainerPort uint16     `json:"container_port"`
	Protocol      string     `json:"protocol"` // ProtocolTCP or ProtocolUDP
}

// ParsePortSpec parses a port to publish, as `-p` takes it:
// [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. "8080:80",
// "127.0.0.1:8080:80" or "5353:53/udp". The protocol defaults to tcp; an IP
// of 0.0.0.0 is the same as none (every address of the host). Ports are
// 1 to 65535; ranges, IPv6 and a missing host port are refused.
func ParsePortSpec(s string) (PortMapping, error) {
	var p PortMapping
	fail := func(why string) (PortMapping, error) {
		return PortMapping{}, fmt.Errorf("port %q: %s (want [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]): %w", s, why, ErrInvalidConfig)
	}
	rest := s
	p.Protocol = ProtocolTCP
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		switch rest[i+1:] {
		case ProtocolTCP, ProtocolUDP:
			p.Protocol = rest[i+1:]
		default:
			return fail(fmt.Sprintf("protocol %q is not tcp or udp", rest[i+1:]))
		}
		rest = rest[:i]
	}
	parts := strings.Split(rest, ":")
	if strings.HasPrefix(rest, "[") {
		return fail("IPv6 is not supported")
	}
	if n := len(parts); n > 3 {
		if ip, err := netip.ParseAddr(strings.Join(parts[:n-2], ":")); err == nil && ip.Is6() {
			return fail("IPv6 is not supported")
		}
		return fail("too many ':'")
	}
	switch len(parts) {
	case 2:
	case 3:
		ip, err := netip.ParseAddr(parts[0])
		if err != nil || !ip.Is4() {
			return fail(fmt.Sprintf("host address %q is not an IPv4 address", parts[0]))
		}
		if !ip.IsUnspecified() {
			p.HostIP = ip
		}
		parts = parts[1:]
	default:
		return fail("no host port")
	}
	var err error
	if p.HostPort, err = parsePort(parts[0]); err != nil {
		return fail("host port: " + err.Error())
	}
	if p.ContainerPort, err = parsePort(parts[1]); err != nil {
		return fail("container port: " + err.Error())
	}
	return p, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	if strings.Contains(s, "-") {
		return 0, fmt.Errorf("%q: port ranges are not supported", s)
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%q is not a port number from 1 to 65535", s)
	}
	return uint16(v), nil
}

// String is the mapping in ParsePortSpec's syntax, e.g.
// "127.0.0.1:8080:80/tcp".
func (p PortMapping) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.HostPort, p.ContainerPort, p.Protocol)
	if p.HostIP.IsValid() {
		s = p.HostIP.String() + ":" + s
	}
	return s
}

// HostAddr is where the port is published, e.g. "0.0.0.0:8080/tcp".
func (p PortMapping) HostAddr() string {
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	return fmt.Sprintf("%s:%d/%s", ip, p.HostPort, p.Protocol)
}

// Validate checks a mapping made without ParsePortSpec.
func (p PortMapping) Validate() error {
	switch {
	case p.Protocol != ProtocolTCP && p.Protocol != ProtocolUDP:
		return fmt.Errorf("port %s: protocol %q is not tcp or udp: %w", p, p.Protocol, ErrInvalidConfig)
	case p.HostPort == 0 || p.ContainerPort == 0:
		return fmt.Errorf("port %s: ports are 1 to 65535: %w", p, ErrInvalidConfig)
	case p.HostIP.IsValid() && (!p.HostIP.Is4() || p.HostIP.IsUnspecified()):
		return fmt.Errorf("port %s: host address must be a specific IPv4 address, or none for every address: %w", p, ErrInvalidConfig)
	}
	return nil
}

// overlaps reports whether p and q claim the same host port: same protocol
// and port, and the same address or either on every address.
func (p PortMapping) overlaps(q PortMapping) bool {
	return p.Protocol == q.Protocol && p.HostPort == q.HostPort &&
		(!p.HostIP.IsValid() || !q.HostIP.IsValid() || p.HostIP == q.HostIP)
}

// fromLoopback reports whether the port is reachable at 127.0.0.0/8.
func (p PortMapping) fromLoopback() bool { return !p.HostIP.IsValid() || p.HostIP.IsLoopback() }

// fromBridge reports whether the port is reachable at an address that a
// container can reach (any address but the loopback ones): a container can
// reach its own published port through the host (hairpin).
func (p PortMapping) fromBridge() bool { return !p.HostIP.IsValid() || !p.HostIP.IsLoopback() }

// CheckPortMappings refuses invalid mappings and two that claim the same
// host port.
func CheckPortMappings(ports []PortMapping) error {
	for i, p := range ports {
		if err := p.Validate(); err != nil {
			return err
		}
		for _, q := range ports[:i] {
			if p.overlaps(q) {
				return fmt.Errorf("ports %s and %s: the same host port twice: %w", q, p, ErrInvalidConfig)
			}
		}
	}
	return nil
}
