package lab

import (
	"bytes"
	"os"
	"testing"
)

// The embedded bytes are exactly what nasm made of the source above.
func TestBootSector(t *testing.T) {
	want, err := os.ReadFile("testdata/boot.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bootSector, want) {
		t.Fatalf("boot sector differs from testdata/boot.bin")
	}
}
