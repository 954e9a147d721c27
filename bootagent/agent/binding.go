package agent

import (
	"errors"
	"fmt"
	"net"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// tableOptions turns the boot config's trust settings into the table's:
// neighbour binding only when asked for (ARP is forgeable); in proxy mode
// without it, the token alone (nothing else binds an address there); never
// neither a token nor a bound address.
func tableOptions(b *BootConfig) ([]table.Option, error) {
	var opts []table.Option
	if b.ScriptTokenOptional {
		opts = append(opts, table.WithoutRequiredToken())
	}
	if b.BindNeighbors {
		n := b.Neighbors
		if n == nil {
			n = table.ProcNeighbors{Interfaces: b.Interfaces}
		}
		return append(opts, table.WithNeighbors(n)), nil
	}
	if b.DHCP.Mode == dhcp.ModeProxy {
		if b.ScriptTokenOptional {
			return nil, errors.New("proxy mode without a required script token needs neighbour binding (--bind-neighbors): nothing else would check a script request")
		}
		opts = append(opts, table.WithoutRequiredBinding())
	}
	return opts, nil
}

// InterfaceOf names the network interface that holds the IPv4 address ip
// (the boot agent's --server-ip), the default DHCP interface.
func InterfaceOf(ip net.IP) (string, error) {
	ip4 := ip.To4()
	if ip4 == nil {
		return "", fmt.Errorf("no boot interface: server IP %q is not an IPv4 address; set --server-ip or --dhcp-interfaces", ip.String())
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("listing network interfaces: %w", err)
	}
	for _, ifc := range ifaces {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip4) {
				return ifc.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no network interface holds the server IP %s: set --dhcp-interfaces or a --server-ip of this node", ip4)
}
