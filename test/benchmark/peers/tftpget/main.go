// Command tftpget times TFTP downloads with blksize and windowsize (RFC 7440)
// for test/benchmark/tftp.sh. usage: tftpget -server host:port -file name
// -blksize 1468 -windowsize 4 -n 10; it prints one line per download and the
// median.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/ggnet/ggnet/bootagent/tftp/tftpclient"
)

func main() {
	server := flag.String("server", "198.51.100.1:69", "TFTP server host:port")
	file := flag.String("file", "ipxe.efi", "file to read")
	blk := flag.String("blksize", "1468", "blksize option (\"\" to leave out)")
	win := flag.String("windowsize", "", "windowsize option (\"\" to leave out)")
	n := flag.Int("n", 5, "downloads")
	flag.Parse()
	var ds []time.Duration
	for i := range *n {
		r, err := tftpclient.Get(*server, *file, tftpclient.Options{BlockSize: *blk, WindowSize: *win, TSize: true, Timeout: 2 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "download", i, err)
			os.Exit(1)
		}
		ds = append(ds, r.Duration)
		fmt.Printf("file=%s bytes=%d blksize=%d windowsize=%d acks=%d timeouts=%d secs=%.4f\n",
			*file, len(r.Data), r.BlockSize, r.WindowSize, r.ACKs, r.Timeouts, r.Duration.Seconds())
	}
	slices.Sort(ds)
	fmt.Printf("median file=%s blksize=%s windowsize=%s n=%d secs=%.4f\n", *file, *blk, *win, *n, ds[len(ds)/2].Seconds())
}
