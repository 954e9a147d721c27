package controllers

import (
	"net"
	"strconv"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// gatewayInSubnet reports whether the gateway (if any) is inside the
// reservation's subnet; CEL checks the formats, this the relation.
func gatewayInSubnet(r *bootv1.IPv4Reservation) bool {
	if r.Gateway == "" {
		return true
	}
	_, subnet, err := net.ParseCIDR(r.Address + "/" + strconv.Itoa(int(r.PrefixLength)))
	gw := net.ParseIP(r.Gateway)
	return err == nil && gw != nil && subnet.Contains(gw)
}
