package storage

import "testing"

// TestCheckEndpoint: the replication endpoint a Node announces is used only
// as <IPv4>:<port>; anything else (a host name, IPv6, no port, 0.0.0.0) is
// refused, so that whoever may patch a Node cannot send the signed
// requests to a name of their choice.
func TestCheckEndpoint(t *testing.T) {
	for _, ok := range []string{"10.0.0.5:3262", "127.0.0.1:0"} {
		if err := checkEndpoint(ok); err != nil {
			t.Errorf("checkEndpoint(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "collector.example:3262", "[fe80::1]:3262", "10.0.0.5", "0.0.0.0:3262", "10.0.0.5:99999", "10.0.0.5:x"} {
		if err := checkEndpoint(bad); err == nil {
			t.Errorf("checkEndpoint(%q) = nil, want an error", bad)
		}
	}
}
