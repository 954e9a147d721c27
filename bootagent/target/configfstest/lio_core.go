package configfstest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// target/ and target/core/: backstores (target_core_configfs.c,
// target_core_file.c).

func (f *FS) targetSubsystem() *node {
	t := group("target")
	t.ro("version", func() string { return "Target Engine Core ConfigFS Infrastructure v5.0 on Linux/x86_64\n" })
	t.value("dbroot", "/etc/target", str(udevLen))
	core := group("core")
	core.defaults(group("alua").defaults(group("lu_gps")))
	core.mkdir = f.makeHBA
	t.defaults(core)
	t.mkdir = func(name string) (*node, error) {
		// target_core_register_fabric loads the fabric's module by name.
		if name != "iscsi" {
			return nil, syscall.EINVAL
		}
		return f.iscsiFabric(), nil
	}
	return t
}

var hbaName = regexp.MustCompile(`^(fileio|iblock|pscsi|rd_mcp|user)_[0-9]+$`)

// makeHBA makes core/<plugin>_<id>; only fileio takes backstores here.
func (f *FS) makeHBA(name string) (*node, error) {
	if !hbaName.MatchString(name) {
		return nil, syscall.EINVAL
	}
	h := group(name)
	h.ro("hba_info", func() string {
		return "HBA Index: 1 plugin: " + name[:strings.LastIndex(name, "_")] + " version: v5.0\n"
	})
	h.value("hba_mode", "0", u32(0, 1))
	if strings.HasPrefix(name, "fileio_") {
		h.mkdir = f.makeDevice
	}
	return h, nil
}

// makeDevice makes a fileio backstore.
func (f *FS) makeDevice(name string) (*node, error) {
	d := &device{}
	n := group(name)
	d.node = n
	n.ro("info", func() string {
		status := "DEACTIVATED"
		if d.configured {
			status = "ACTIVATED"
		}
		return fmt.Sprintf("Status: %s  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 16384\n"+
			"        TCM FILEIO ID: 0        File: %s  Size: %d  Mode: O_DSYNC\n", status, d.fdName, d.fdSize)
	})
	// control is write-only (CONFIGFS_ATTR_WO): fd_dev_name=, fd_dev_size=,
	// fd_buffered_io=, comma- or newline-separated; other keys are ignored.
	n.attr("control", nil, func(s string) error {
		for _, kv := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "fd_dev_name":
				if len(v) >= fdNameLen {
					return syscall.EINVAL
				}
				d.fdName = v
			case "fd_dev_size":
				size, err := strconv.ParseUint(v, 0, 64)
				if err != nil {
					return syscall.EINVAL
				}
				d.fdSize = size
			case "fd_buffered_io":
				if v != "0" && v != "1" {
					return syscall.EINVAL
				}
			}
		}
		return nil
	})
	n.value("alias", "", str(udevLen))
	n.attr("udev_path", func() string {
		if d.udevPath == "" {
			return ""
		}
		return d.udevPath + "\n"
	}, func(s string) error {
		if len(s) >= udevLen || s == "" {
			return syscall.EINVAL
		}
		d.udevPath = strings.TrimSuffix(s, "\n")
		return nil
	})
	// enable: "1" configures the device once (target_configure_device:
	// EEXIST after); there is no way back but rmdir.
	n.attr("enable", func() string { return b2s(d.configured) + "\n" }, func(s string) error {
		switch {
		case !strings.Contains(s, "1"):
			return syscall.EINVAL
		case d.configured:
			return syscall.EEXIST
		case d.fdName == "" || d.fdSize == 0:
			// fd_configure_device: a file needs fd_dev_name= and fd_dev_size=.
			return syscall.EINVAL
		}
		d.configured = true
		return nil
	})
	n.value("alua_lu_gp", "default_lu_gp", str(udevLen))
	n.value("lba_map", "", str(4096))
	attrib := group("attrib")
	blockSize := "512"
	attrib.attr("block_size", func() string { return blockSize + "\n" }, func(s string) error {
		v, err := kstrtou32(s)
		switch {
		case err != nil || (v != 512 && v != 1024 && v != 2048 && v != 4096):
			return syscall.EINVAL
		case d.exports > 0:
			// se_dev_set_block_size: not while a LUN exports the device.
			return syscall.EINVAL
		}
		blockSize = strconv.FormatUint(uint64(v), 10)
		return nil
	})
	attrib.ro("hw_block_size", func() string { return "512\n" })
	attrib.value("emulate_write_cache", "0", u32(0, 1))
	attrib.value("is_nonrot", "0", u32(0, 1))
	attrib.value("queue_depth", "128", u32(1, 1024))
	n.defaults(attrib, group("pr"), group("wwn"), group("alua").defaults(group("default_tg_pt_gp")), group("statistics"))
	n.rmdir = func() error {
		if d.exports > 0 {
			return syscall.EBUSY
		}
		return nil
	}
	n.state = d
	return n, nil
}
