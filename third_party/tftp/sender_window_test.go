package tftp

import (
	"strconv"
	"testing"
)

func TestParseWindowSize(t *testing.T) {
	for v, want := range map[string]int{
		"1": 1, "4": 4, "0004": 4, "65535": 65535,
		"": 0, "0": 0, "65536": 0, "99999": 0, "100000": 0, "-4": 0, "+4": 0, " 4": 0, "4 ": 0, "4x": 0, "0x10": 0, "٤": 0,
	} {
		got, err := parseWindowSize(v)
		if want == 0 && err == nil {
			t.Errorf("parseWindowSize(%q) = %d, want an error", v, got)
		}
		if want != 0 && (err != nil || got != want) {
			t.Errorf("parseWindowSize(%q) = %d, %v, want %d", v, got, err, want)
		}
	}
}

// FuzzParseWindowSize: a value is accepted exactly when it is 1 to 5 ASCII
// digits whose value is 1..65535, and then parsed as strconv would.
func FuzzParseWindowSize(f *testing.F) {
	for _, s := range []string{"4", "65535", "65536", "0", "-1", "+1", "1e3", " 1", "00001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := parseWindowSize(v)
		digits := len(v) >= 1 && len(v) <= 5
		for _, c := range []byte(v) {
			digits = digits && c >= '0' && c <= '9'
		}
		n, perr := strconv.Atoi(v)
		valid := digits && perr == nil && n >= 1 && n <= 65535
		if valid != (err == nil) || (valid && got != n) {
			t.Fatalf("parseWindowSize(%q) = %d, %v; digits %v, Atoi %d", v, got, err, digits, n)
		}
	})
}
