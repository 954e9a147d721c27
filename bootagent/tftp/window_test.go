package tftp

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/tftp/tftpclient"
)

// get reads ipxe.efi (1 MiB + 123 bytes: 715 blocks of 1468) with blksize
// 1468 and tsize, and the window w ("" leaves the option out).
func get(t *testing.T, addr, w string, mod func(*tftpclient.Options)) *tftpclient.Result {
	t.Helper()
	// 3 s: the tests that count no client timeout must not see one on a
	// loaded machine (make test runs packages side by side on 2 cores).
	o := tftpclient.Options{BlockSize: "1468", WindowSize: w, TSize: true, Timeout: 3 * time.Second}
	if mod != nil {
		mod(&o)
	}
	r, err := tftpclient.Get(addr, "ipxe.efi", o)
	if err != nil {
		t.Fatalf("windowsize %q: %v", w, err)
	}
	return r
}

const efiBlocks = (1<<20+123)/1468 + 1

// TestBlockSize: the server uses the blksize the client asks for (EDK2 asks
// for the link's MTU less the IP, UDP and TFTP headers: 1468 on Ethernet),
// up to RFC 2348's 65464 (and the interface's MTU less 28, which on
// loopback is larger); a value outside 8..65464 or not a number is left out
// of the OACK, and the transfer uses 512-byte blocks.
func TestBlockSize(t *testing.T) {
	addr, efi, _ := serve(t, machines())
	for _, tc := range []struct {
		ask  string
		want int
	}{
		{"1468", 1468}, {"512", 512}, {"8192", 8192}, {"65464", 65464},
		{"65465", 512}, {"70000", 512}, {"7", 512}, {"abc", 512}, {"-1468", 512},
	} {
		t.Run(tc.ask, func(t *testing.T) {
			g := NewWithT(t)
			r := get(t, addr, "", func(o *tftpclient.Options) { o.BlockSize = tc.ask })
			g.Expect(r.OACK).To(HaveKeyWithValue("tsize", "1048699"))
			if tc.want == 512 && tc.ask != "512" {
				g.Expect(r.OACK).NotTo(HaveKey("blksize"))
			} else {
				g.Expect(r.OACK).To(HaveKeyWithValue("blksize", tc.ask))
			}
			g.Expect(r.BlockSize).To(Equal(tc.want))
			g.Expect(r.Packets).To(Equal(len(efi)/tc.want+1), "every DATA packet but the last carries a full block")
			g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
		})
	}
}

// TestWindowSize: RFC 7440 as EDK2's PXE client uses it (windowsize 4, one
// ACK per window).
func TestWindowSize(t *testing.T) {
	addr, efi, _ := serve(t, machines())

	t.Run("negotiated window", func(t *testing.T) {
		for _, tc := range []struct {
			ask  string
			want int
		}{{"4", 4}, {"1", 1}, {"16", 16}, {"64", MaxWindowSize}, {"65535", MaxWindowSize}} {
			g := NewWithT(t)
			r := get(t, addr, tc.ask, nil)
			g.Expect(r.OACK).To(HaveKeyWithValue("windowsize", fmtInt(tc.want)), "asked %s", tc.ask)
			g.Expect(r.OACK).To(HaveKeyWithValue("blksize", "1468"))
			g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
			// The server sent a whole window per ACK: the client ACKed
			// once per window (and the OACK) and never had to time out.
			g.Expect(r.ACKs).To(Equal(1+(efiBlocks+tc.want-1)/tc.want), "asked %s", tc.ask)
			g.Expect(r.Timeouts).To(BeZero())
			g.Expect(r.MaxAhead).To(Equal(tc.want), "never more than a window beyond the last ACK")
			g.Expect(r.Duplicates).To(BeZero())
		}
	})

	t.Run("a window holds at most 128 KiB", func(t *testing.T) {
		g := NewWithT(t)
		r := get(t, addr, "16", func(o *tftpclient.Options) { o.BlockSize = "65464" })
		g.Expect(r.OACK).To(HaveKeyWithValue("blksize", "65464"))
		g.Expect(r.OACK).To(HaveKeyWithValue("windowsize", "2"))
		g.Expect(r.MaxAhead).To(Equal(2))
		g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
	})

	t.Run("client without the option gets lockstep", func(t *testing.T) {
		g := NewWithT(t)
		// The client ACKs every block (window 1); had the server sent more
		// than one block per ACK, it would count blocks beyond its ACK.
		r := get(t, addr, "", nil)
		g.Expect(r.OACK).NotTo(HaveKey("windowsize"))
		g.Expect(r.MaxAhead).To(Equal(1))
		g.Expect(r.Duplicates).To(BeZero())
		g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
		// pin/tftp's own client, which does not know the option.
		got, _, err := fetch(addr, "ipxe.efi", 1468)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(bytes.Equal(got, efi)).To(BeTrue())
	})

	t.Run("bad values are left out of the OACK", func(t *testing.T) {
		for _, ask := range []string{"0", "65536", "99999999999", "-4", "+4", "4x", " 4", "0x10"} {
			g := NewWithT(t)
			r := get(t, addr, ask, nil)
			g.Expect(r.OACK).NotTo(HaveKey("windowsize"), "asked %q", ask)
			g.Expect(r.OACK).To(HaveKeyWithValue("blksize", "1468"))
			g.Expect(r.MaxAhead).To(Equal(1), "asked %q", ask)
			g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
		}
	})

	t.Run("lost blocks are sent again from the ACKed one", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			lost     uint16 // lost once
			timeouts int
		}{
			// The client ACKs 2 when block 4 comes instead of 3, and the
			// server goes on from 3 at once.
			{"inside a window", 3, 0},
			// Nothing follows the window's last block: the client times
			// out and ACKs 3; the server goes on from 4.
			{"a window's last", 4, 1},
			// The client ACKs 4, the block before the window, when 6 comes:
			// the server takes it for a duplicate and sends the window again
			// after its own timeout (2 s).
			{"a window's first", 5, 2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				g := NewWithT(t)
				r := get(t, addr, "4", func(o *tftpclient.Options) {
					o.Retries = 5
					if tc.timeouts > 0 {
						o.Timeout = time.Second // the case waits for it
					}
					o.Drop = func(block uint16, seen int) bool { return block == tc.lost && seen == 0 }
				})
				g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
				g.Expect(r.Timeouts).To(BeNumerically(">=", tc.timeouts))
				if tc.timeouts == 0 {
					g.Expect(r.Timeouts).To(BeZero())
				}
				g.Expect(r.Packets).To(BeNumerically(">", efiBlocks))
			})
		}
	})

	t.Run("duplicate ACKs do not make the server resend", func(t *testing.T) {
		g := NewWithT(t)
		r := get(t, addr, "4", func(o *tftpclient.Options) { o.DuplicateACKs = true })
		g.Expect(bytes.Equal(r.Data, efi)).To(BeTrue())
		g.Expect(r.Duplicates).To(BeZero(), "no window sent twice (no Sorcerer's Apprentice)")
		g.Expect(r.Packets).To(Equal(efiBlocks))
	})

	t.Run("scripts too", func(t *testing.T) {
		g := NewWithT(t)
		r, err := tftpclient.Get(addr, scriptName(mac31, token), tftpclient.Options{WindowSize: "4", Timeout: time.Second})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(r.Data)).To(Equal(script))
		g.Expect(r.WindowSize).To(Equal(4))
	})
}

func fmtInt(n int) string { return strconv.Itoa(n) }
