package v1alpha1

import "strings"

// TargetIQN is the only target name a session may have:
// <prefix>:<namespace>:<session>. The manager names the target with it and
// the storage agent acts only on the target it names, never on whatever a
// session's status says; prefix may end in ':' or not (the manager's flag is
// written without it, the storage agent's with it).
func TargetIQN(prefix, namespace, session string) string {
	return strings.TrimSuffix(prefix, ":") + ":" + namespace + ":" + session
}
