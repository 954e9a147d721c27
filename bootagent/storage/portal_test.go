package storage

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestCheckPortal(t *testing.T) {
	for _, tc := range []struct {
		portal string
		err    string
	}{
		{portal: "10.9.0.5:3260"},
		{portal: "127.0.0.1:3261"},
		{portal: "0.0.0.0:3260", err: "not 0.0.0.0"},
		{portal: ":3260", err: "not an IPv4 address"},
		{portal: "10.9.0.5", err: "want <IPv4 address>:<port>"},
		{portal: "[::]:3260", err: "not an IPv4 address"},
		{portal: "[fd00::1]:3260", err: "not an IPv4 address"},
		{portal: "[::ffff:10.9.0.5]:3260", err: "not an IPv4 address"},
		{portal: "storage-1:3260", err: "not an IPv4 address"},
		{portal: "10.9.0.5:0", err: "not 1 to 65535"},
		{portal: "10.9.0.5:65536", err: "not 1 to 65535"},
		{portal: "10.9.0.5:iscsi", err: "not 1 to 65535"},
	} {
		t.Run(tc.portal, func(t *testing.T) {
			g := NewWithT(t)
			err := CheckPortal(tc.portal)
			if tc.err == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
		})
	}
}
