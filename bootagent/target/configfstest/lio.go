package configfstest

import (
	"strconv"
	"strings"
	"syscall"
)

// LIO's groups, attributes and rules: target_core_configfs.c (target/,
// core/, backstores), target_core_fabric_configfs.c (TPGs, LUNs, ACLs,
// mapped LUNs, their links), iscsi_target_configfs.c and iscsi_target_tpg.c
// (the iSCSI fabric's attributes, enable, portals, CHAP). Only what a driver
// reads, writes or trips on is here, with the kernel's defaults.

// Kernel limits.
const (
	iqnLen     = 224 // ISCSI_IQN_LEN, TRANSPORT_IQN_LEN
	authLen    = 256 // MAX_USER_LEN, MAX_PASS_LEN
	udevLen    = 512 // SE_UDEV_PATH_LEN
	fdNameLen  = 256 // FD_MAX_DEV_NAME
	portalLen  = 256 // MAX_PORTAL_LEN
	maxMapping = 1<<32 - 1
)

// kstrtou32 parses as the kernel's kstrtou32: base 0 (0x.. hex, 0.. octal),
// one trailing newline allowed; anything else is EINVAL.
func kstrtou32(s string) (uint32, error) {
	s = strings.TrimSuffix(s, "\n")
	if s == "" || strings.Contains(s, "_") || strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-") {
		return 0, syscall.EINVAL
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, syscall.EINVAL
	}
	return uint32(v), nil
}

// u32 is a number attribute with the kernel's range check.
func u32(lo, hi uint32) func(string) (string, error) {
	return func(s string) (string, error) {
		v, err := kstrtou32(s)
		if err != nil || v < lo || v > hi {
			return "", syscall.EINVAL
		}
		return strconv.FormatUint(uint64(v), 10), nil
	}
}

// str is a string attribute kept without its trailing newline.
func str(max int) func(string) (string, error) {
	return func(s string) (string, error) {
		if len(s) >= max {
			return "", syscall.EINVAL
		}
		return strings.TrimSuffix(s, "\n"), nil
	}
}

// device is a backstore (struct se_device).
type device struct {
	node       *node
	fdName     string
	fdSize     uint64
	configured bool
	udevPath   string
	exports    int // TPG LUNs linked to it (dev->export_count)
}

// tpg is a target portal group (struct iscsi_portal_group).
type tpg struct {
	node    *node
	wwn     string
	tag     uint16
	enabled bool
	attrib  map[string]uint32
	acls    map[string]*acl
}

// lun is a TPG's LUN (struct se_lun).
type lun struct {
	node *node
	tpg  *tpg
	dev  *device
}

// acl is an initiator's node ACL with its CHAP (struct iscsi_node_acl).
type acl struct {
	node      *node
	tpg       *tpg
	initiator string
	auth      map[string]string // userid, password, userid_mutual, password_mutual as stored
	mapped    map[string]*mappedLUN
	session   *session
}

// mappedLUN is an ACL's LUN (struct se_lun_acl).
type mappedLUN struct {
	acl *acl
	lun *lun
}

// session is a logged-in initiator.
type session struct {
	sid  int
	addr string
}

func b2s(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
