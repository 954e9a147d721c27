package storage

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/iscsi"
)

var _ = Describe("Retiring a prepared session (RetireAnnotation)", func() {
	It("retires a session no PC logged in to, refusing its credentials afterwards, and keeps one a PC is logged in to, whose login stays", func() {
		runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		l.machine("seat-2")
		ctx, cancel := context.WithTimeout(l.ctx, 2*time.Minute)
		defer cancel()
		annotate := func(s *bootv1.BootSession, auto bool) {
			GinkgoHelper()
			Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
				if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
					return err
				}
				if s.Annotations == nil {
					s.Annotations = map[string]string{}
				}
				s.Annotations[bootv1.RetireAnnotation] = "the spec asks"
				if auto {
					if s.Labels == nil {
						s.Labels = map[string]string{}
					}
					s.Labels[bootv1.AutoSessionLabel] = "true"
				}
				return k8sClient.Update(ctx, s)
			})).To(Succeed())
		}
		ask := func(s *bootv1.BootSession) { GinkgoHelper(); annotate(s, true) }
		answer := func(s *bootv1.BootSession) func() string {
			return func() string {
				_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)
				c := meta.FindStatusCondition(s.Status.Conditions, bootv1.RetireCondition)
				if c == nil {
					return ""
				}
				return string(c.Status) + "/" + c.Reason
			}
		}
		pc := func(s *bootv1.BootSession) iscsi.Config {
			c := credentials(s)
			return iscsi.Config{Portal: tgtd.Portal, TargetIQN: c.targetIQN, InitiatorIQN: c.initiator, LUN: 1,
				Username: c.user, Password: c.password, TargetUsername: c.targetUser, TargetPassword: c.targetPassword}
		}

		By("a session nobody logged in to: Retire=True Unused; its target stays but refuses the session's own credentials")
		a := l.session("a", "seat-1", "win11", bootv1.WritebackDiscard)
		cfgA := pc(a)
		l.machine("seat-3")
		u := l.session("u", "seat-3", "win11", bootv1.WritebackDiscard)
		cfgU := pc(u)
		annotate(u, false) // a user's session (no AutoSession label), annotated by someone
		ask(a)
		Eventually(answer(a), eventually).Should(Equal("True/" + bootv1.RetireUnusedReason))

		By("a user's session (not AutoSession) with the annotation: ignored, its target stays bound to its initiator")
		Expect(answer(u)()).To(BeEmpty())
		sessU, err := iscsi.Login(ctx, cfgU)
		Expect(err).NotTo(HaveOccurred(), "the session's own login works")
		Expect(sessU.Logout(ctx)).To(Succeed())
		Expect(targets()).To(ContainElement(HaveField("InitiatorIQN", cfgU.InitiatorIQN)))
		Expect(targetIQNs()).To(ContainElement(cfgA.TargetIQN), "the target stays until the session stops")
		_, err = iscsi.Login(ctx, cfgA)
		Expect(err).To(HaveOccurred(), "a login with the retired session's real credentials is refused")
		Consistently(func() error {
			sess, err := iscsi.Login(ctx, cfgA)
			if err == nil {
				_ = sess.Close()
			}
			return err
		}, 2*time.Second, 500*time.Millisecond).Should(HaveOccurred(), "the resyncs keep it refusing")

		By("a session a PC is logged in to: Retire=False InUse; the PC's login goes on and new logins work")
		b := l.session("b", "seat-2", "win11", bootv1.WritebackDiscard)
		cfgB := pc(b)
		sess, err := iscsi.Login(ctx, cfgB)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { _ = sess.Close() })
		ask(b)
		Eventually(answer(b), eventually).Should(Equal("False/" + bootv1.InUseReason))
		_, _, err = sess.ReadCapacity(ctx)
		Expect(err).NotTo(HaveOccurred(), "the PC's session still works")
		again, err := iscsi.Login(ctx, cfgB)
		Expect(err).NotTo(HaveOccurred(), "the session's initiator is bound")
		Expect(again.Logout(ctx)).To(Succeed())
		Expect(targets()).To(ContainElement(HaveField("InitiatorIQN", cfgB.InitiatorIQN)))

		By("stopping the retired session removes its target as usual")
		l.stop(a)
		Expect(targetIQNs()).NotTo(ContainElement(cfgA.TargetIQN))
	})
})
