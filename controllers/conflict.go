package controllers

import (
	"context"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// A MAC and a reserved address belong to one Machine in the whole cluster:
// the boot LAN does not know namespaces. Of the Machines that claim the
// same MAC or address, the one that claimed first keeps it; the others have
// Conflict=True, get no address and no new session, and the boot agent
// serves none of their sessions.

// claimsFirst reports whether o's claim comes before m's: a Machine an
// operator made before a discovered placeholder, then the older, then by
// namespace/name.
func claimsFirst(o, m *bootv1.Machine) bool {
	if od, md := discovered(o), discovered(m); od != md {
		return md
	}
	if !o.CreationTimestamp.Equal(&m.CreationTimestamp) {
		return o.CreationTimestamp.Before(&m.CreationTimestamp)
	}
	return o.Namespace+"/"+o.Name < m.Namespace+"/"+m.Name
}

func discovered(m *bootv1.Machine) bool { return m.Labels[bootv1.DiscoveredLabel] == "true" }

func sameMachine(a, b *bootv1.Machine) bool { return a.Namespace == b.Namespace && a.Name == b.Name }

// claim is another Machine that claims m's MAC or address.
type claim struct {
	machine *bootv1.Machine
	// what is claimed: "MAC 52:54:00:12:34:56" or "address 10.20.0.31".
	what string
	// reason is DuplicateMACReason or DuplicateIPReason.
	reason string
}

// claimsOf lists, cluster-wide, the other Machines with m's MAC or reserved
// address. A Machine being deleted still claims them: its finalizer keeps it
// only while a session of it may run, and that PC still uses its MAC and
// address.
func claimsOf(ctx context.Context, c client.Reader, m *bootv1.Machine) ([]claim, error) {
	var out []claim
	var sameMAC bootv1.MachineList
	if err := c.List(ctx, &sameMAC, client.MatchingFields{indexMachineMAC: m.Spec.MAC}); err != nil {
		return nil, err
	}
	for i := range sameMAC.Items {
		o := &sameMAC.Items[i]
		if !sameMachine(o, m) {
			out = append(out, claim{o, "MAC " + m.Spec.MAC, bootv1.DuplicateMACReason})
		}
	}
	if m.Spec.IPv4 != nil {
		var sameIP bootv1.MachineList
		if err := c.List(ctx, &sameIP, client.MatchingFields{indexMachineIP: m.Spec.IPv4.Address}); err != nil {
			return nil, err
		}
		for i := range sameIP.Items {
			o := &sameIP.Items[i]
			if !sameMachine(o, m) {
				out = append(out, claim{o, "address " + m.Spec.IPv4.Address, bootv1.DuplicateIPReason})
			}
		}
	}
	return out, nil
}

// setConflictCondition computes m's Conflict condition (negative polarity)
// from the other claims: True, naming namespace/name of every Machine that
// claimed first (reason DuplicateMAC before DuplicateIP); False otherwise,
// naming the newer claimants if any. It returns the message when True.
func setConflictCondition(m *bootv1.Machine, claims []claim) string {
	var first, later []string
	reason := ""
	for _, c := range claims {
		who := c.what + " of Machine " + c.machine.Namespace + "/" + c.machine.Name
		if claimsFirst(c.machine, m) {
			first = append(first, who)
			if reason == "" || c.reason == bootv1.DuplicateMACReason {
				reason = c.reason
			}
		} else {
			later = append(later, c.machine.Namespace+"/"+c.machine.Name)
		}
	}
	sort.Strings(first)
	sort.Strings(later)
	later = compact(later)
	if len(first) > 0 {
		msg := "conflicts with " + strings.Join(first, ", ") + ", which claimed it first; this Machine gets no address and no session until one is changed"
		meta.SetStatusCondition(&m.Status.Conditions, metav1.Condition{Type: bootv1.ConflictCondition, Status: metav1.ConditionTrue,
			Reason: reason, Message: msg, ObservedGeneration: m.Generation})
		return msg
	}
	msg := "the MAC and the address are unique"
	if len(later) > 0 {
		msg = "this Machine keeps its MAC and address; the newer Machines " + strings.Join(later, ", ") + " that claim them have Conflict=True"
	}
	meta.SetStatusCondition(&m.Status.Conditions, metav1.Condition{Type: bootv1.ConflictCondition, Status: metav1.ConditionFalse,
		Reason: bootv1.NoConflictReason, Message: msg, ObservedGeneration: m.Generation})
	return ""
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// machineConflict returns why m is in conflict, or "": its Conflict
// condition, or, before the Machine controller has seen a new claim, an
// older Machine with its MAC or address.
func machineConflict(ctx context.Context, c client.Reader, m *bootv1.Machine) (string, error) {
	if cond := meta.FindStatusCondition(m.Status.Conditions, bootv1.ConflictCondition); cond != nil && cond.Status == metav1.ConditionTrue {
		return cond.Message, nil
	}
	claims, err := claimsOf(ctx, c, m)
	if err != nil {
		return "", err
	}
	return setConflictCondition(m.DeepCopy(), claims), nil
}
