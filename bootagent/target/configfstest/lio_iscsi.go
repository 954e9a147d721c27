package configfstest

import (
	"net"
	"strconv"
	"strings"
	"syscall"
)

// target/iscsi/: targets, TPGs, LUNs, portals, ACLs and mapped LUNs
// (target_core_fabric_configfs.c, iscsi_target_configfs.c, iscsi_target_tpg.c).

// iscsiFabric is target/iscsi.
func (f *FS) iscsiFabric() *node {
	n := group("iscsi")
	n.ro("lio_version", func() string { return "Datera Inc. iSCSI Target v4.1.0\n" })
	da := group("discovery_auth")
	da.value("enforce_discovery_auth", "0", u32(0, 1))
	authAttrs(da, map[string]string{})
	n.defaults(da)
	n.mkdir = func(name string) (*node, error) {
		if len(name) >= iqnLen {
			return nil, syscall.EINVAL
		}
		return f.makeWWN(name), nil
	}
	return n
}

// makeWWN is target/iscsi/<iqn>.
func (f *FS) makeWWN(iqn string) *node {
	n := group(iqn)
	n.defaults(group("fabric_statistics").defaults(group("iscsi_instance"), group("iscsi_sess_err"), group("iscsi_tgt_attr"),
		group("iscsi_login_stats"), group("iscsi_logout_stats")))
	n.mkdir = func(name string) (*node, error) {
		tag, ok := strings.CutPrefix(name, "tpgt_")
		v, err := strconv.ParseUint(tag, 0, 16)
		if !ok || err != nil {
			return nil, syscall.EINVAL
		}
		return f.makeTPG(n, iqn, uint16(v)), nil
	}
	return n
}

// tpgAttribs are the iSCSI TPG's attributes: default, lowest, highest
// (iscsi_target_tpg.c iscsit_ta_*).
var tpgAttribs = map[string][3]uint32{
	"authentication":          {1, 0, 1},
	"login_timeout":           {15, 5, 30},
	"netif_timeout":           {2, 2, 15},
	"generate_node_acls":      {0, 0, 1},
	"default_cmdsn_depth":     {64, 1, 512},
	"cache_dynamic_acls":      {0, 0, 1},
	"demo_mode_write_protect": {1, 0, 1},
	"prod_mode_write_protect": {0, 0, 1},
	"demo_mode_discovery":     {1, 0, 1},
	"default_erl":             {0, 0, 2},
	"t10_pi":                  {0, 0, 1},
	"fabric_prot_type":        {0, 0, 3},
	"tpg_enabled_sendtargets": {1, 0, 1},
	"login_keys_workaround":   {1, 0, 1},
}

// makeTPG is target/iscsi/<iqn>/tpgt_<n>.
func (f *FS) makeTPG(wwn *node, iqn string, tag uint16) *node {
	t := &tpg{wwn: iqn, tag: tag, attrib: map[string]uint32{}, acls: map[string]*acl{}}
	n := group("tpgt_" + strconv.Itoa(int(tag)))
	t.node = n
	n.state = t
	// enable: iscsit_tpg_enable_portal_group and _disable_ refuse a TPG
	// already in that state (EINVAL) on every kernel before 5.17, which
	// moved enable to target_fabric_tpg_base_enable_store and made a
	// same-value write a no-op. A driver must write it only when it differs.
	n.attr("enable", func() string { return b2s(t.enabled) + "\n" }, func(s string) error {
		v, err := kstrtou32(s)
		if err != nil || v > 1 {
			return syscall.EINVAL
		}
		if (v == 1) == t.enabled {
			return syscall.EINVAL
		}
		t.enabled = v == 1
		if !t.enabled {
			for _, a := range t.acls {
				if a.session != nil {
					f.disrupt("TPG %s/%s disabled: session of %s dropped", iqn, n.name, a.initiator)
					a.session = nil
				}
			}
		}
		return nil
	})
	n.ro("dynamic_sessions", func() string { return "" })
	attrib := group("attrib")
	for name, r := range tpgAttribs {
		t.attrib[name] = r[0]
		attrib.attr(name, func() string { return strconv.FormatUint(uint64(t.attrib[name]), 10) + "\n" }, func(s string) error {
			v, err := kstrtou32(s)
			if err != nil || v < r[1] || v > r[2] {
				return syscall.EINVAL
			}
			t.attrib[name] = v
			return nil
		})
	}
	param := group("param")
	for name, v := range map[string]string{"AuthMethod": "CHAP,None", "HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None",
		"MaxConnections": "1", "TargetAlias": "LIO Target", "InitialR2T": "Yes", "ImmediateData": "Yes",
		"MaxRecvDataSegmentLength": "8192", "MaxBurstLength": "262144", "FirstBurstLength": "65536",
		"DefaultTime2Wait": "2", "DefaultTime2Retain": "20", "ErrorRecoveryLevel": "0"} {
		param.value(name, v, str(authLen))
	}
	auth := group("auth")
	authAttrs(auth, map[string]string{})
	luns := group("lun")
	luns.mkdir = func(name string) (*node, error) {
		if _, err := lunNumber(name); err != nil {
			return nil, err
		}
		return f.makeLUN(t), nil
	}
	nps := group("np")
	nps.mkdir = func(name string) (*node, error) { return f.makeNP(t, wwn, name) }
	acls := group("acls")
	acls.mkdir = func(name string) (*node, error) {
		if len(name) >= iqnLen {
			return nil, syscall.EINVAL
		}
		return f.makeACL(t, name), nil
	}
	n.defaults(luns, nps, acls, attrib, auth, param)
	n.rmdir = func() error {
		// iscsit_tpg_del_portal_group(force): sessions go with it. The
		// ACLs are gone first (configfs), so none is left here.
		t.enabled = false
		return nil
	}
	return n
}

func lunNumber(name string) (uint64, error) {
	num, ok := strings.CutPrefix(name, "lun_")
	v, err := strconv.ParseUint(num, 0, 64)
	if !ok || err != nil || v > maxMapping {
		return 0, syscall.EINVAL
	}
	return v, nil
}

// makeLUN is a TPG's lun/lun_<n>: it takes one link, to a configured
// backstore (target_fabric_port_link).
func (f *FS) makeLUN(t *tpg) *node {
	l := &lun{tpg: t}
	n := group("")
	l.node = n
	for name, v := range map[string]string{"alua_tg_pt_gp": "default_tg_pt_gp", "alua_tg_pt_offline": "0",
		"alua_tg_pt_status": "0", "alua_tg_pt_write_md": "0"} {
		n.value(name, v, str(authLen))
	}
	n.defaults(group("statistics").defaults(group("scsi_port"), group("scsi_tgt_port"), group("scsi_transport")))
	n.allowLink = func(target *node) error {
		d, ok := target.state.(*device)
		switch {
		case !ok:
			return syscall.EFAULT // "Bad se_dev_ci"
		case !d.configured:
			return syscall.ENODEV // "se_device not configured yet, cannot port link"
		case l.dev != nil:
			return syscall.EEXIST // "Port Symlink already exists"
		}
		l.dev = d
		d.exports++
		return nil
	}
	n.dropLink = func(*node) {
		for _, a := range t.acls {
			for _, m := range a.mapped {
				if m.lun == l && a.session != nil {
					f.disrupt("LUN %s unlinked from its backstore under the session of %s", n.rel(), a.initiator)
				}
			}
		}
		l.dev.exports--
		l.dev = nil
	}
	n.state = l
	return n
}

// makeNP is a TPG's np/<ip>:<port>; a portal is one per target
// (iscsit_tpg_check_network_portal: EEXIST on another TPG of the same IQN).
func (f *FS) makeNP(t *tpg, wwn *node, name string) (*node, error) {
	if len(name) > portalLen {
		return nil, syscall.EOVERFLOW
	}
	host, port, err := net.SplitHostPort(name)
	if err != nil || net.ParseIP(host) == nil {
		return nil, syscall.EINVAL
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return nil, syscall.EINVAL
	}
	for _, other := range wwn.children {
		if other.kind != kindGroup || other.dflt || other == t.node {
			continue
		}
		if nps, ok := other.children["np"]; ok {
			if _, taken := nps.children[name]; taken {
				return nil, syscall.EEXIST
			}
		}
	}
	n := group("")
	n.value("sctp", "0", u32(0, 1))
	n.value("iser", "0", u32(0, 1))
	return n, nil
}

// authAttrs are CHAP's attributes (iscsi_target_configfs.c
// __DEF_NACL_AUTH_STR): each keeps exactly what it is given, a trailing
// newline included, and shows it followed by a newline; "NULL" clears it.
// A secret stored with its newline is a different secret: CHAP fails.
func authAttrs(n *node, auth map[string]string) {
	for _, name := range []string{"userid", "password", "userid_mutual", "password_mutual"} {
		auth[name] = ""
		n.attr(name, func() string { return auth[name] + "\n" }, func(s string) error {
			if len(s) >= authLen {
				return syscall.EINVAL
			}
			auth[name] = s
			return nil
		})
	}
	n.ro("authenticate_target", func() string {
		set := func(k string) bool { return auth[k] != "" && !strings.HasPrefix(auth[k], "NULL") }
		return b2s(set("userid_mutual") && set("password_mutual")) + "\n"
	})
}

// makeACL is a TPG's acls/<initiator>.
func (f *FS) makeACL(t *tpg, initiator string) *node {
	a := &acl{tpg: t, initiator: initiator, auth: map[string]string{}, mapped: map[string]*mappedLUN{}}
	n := group("")
	a.node = n
	n.ro("info", func() string { return a.info() })
	n.value("cmdsn_depth", "64", u32(1, 512))
	n.value("tag", "", str(authLen))
	attrib := group("attrib")
	for name, v := range map[string]string{"dataout_timeout": "3", "dataout_timeout_retries": "5", "default_erl": "0",
		"nopin_timeout": "15", "nopin_response_timeout": "30", "random_datain_pdu_offsets": "0",
		"random_datain_seq_offsets": "0", "random_r2t_offsets": "0"} {
		attrib.value(name, v, u32(0, 3600))
	}
	auth := group("auth")
	authAttrs(auth, a.auth)
	n.defaults(attrib, auth, group("param"), group("fabric_statistics"))
	n.mkdir = func(name string) (*node, error) {
		if _, err := lunNumber(name); err != nil {
			return nil, err
		}
		return f.makeMappedLUN(a, name), nil
	}
	n.rmdir = func() error {
		// core_tpg_del_initiator_node_acl shuts the ACL's sessions down.
		if a.session != nil {
			f.disrupt("ACL %s removed under its session", n.rel())
			a.session = nil
		}
		delete(t.acls, initiator)
		return nil
	}
	t.acls[initiator] = a
	return n
}

// makeMappedLUN is an ACL's lun_<n>: it takes one link, to a LUN of the
// same TPG that has a backstore (target_fabric_mappedlun_link).
func (f *FS) makeMappedLUN(a *acl, name string) *node {
	m := &mappedLUN{acl: a}
	n := group("")
	n.value("write_protect", "0", u32(0, 1))
	n.defaults(group("statistics"))
	n.allowLink = func(target *node) error {
		l, ok := target.state.(*lun)
		switch {
		case !ok:
			return syscall.EFAULT // "Bad lun->lun_link_magic"
		case l.tpg != a.tpg:
			return syscall.EINVAL // "Illegal Initiator ACL SymLink outside of ..."
		case l.dev == nil:
			return syscall.EINVAL // "Source se_lun->lun_se_dev does not exist"
		case m.lun != nil:
			// The kernel maps one LUN per mapped LUN; a second link is
			// refused here rather than modelled.
			return syscall.EEXIST
		}
		m.lun = l
		return nil
	}
	n.dropLink = func(*node) {
		if a.session != nil {
			f.disrupt("mapped LUN %s unlinked under the session of %s", n.rel(), a.initiator)
		}
		m.lun = nil
	}
	n.rmdir = func() error {
		delete(a.mapped, name)
		return nil
	}
	a.mapped[name] = m
	return n
}
