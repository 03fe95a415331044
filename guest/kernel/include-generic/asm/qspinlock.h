/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvlock's "generic" flavour: an architecture that takes asm-generic's
 * qspinlock as it is and provides only the PV operations (pv_wait,
 * pv_kick, vcpu_is_preempted), like a non-x86 PV guest would.
 */
#ifndef PVLOCK_GENERIC_ASM_QSPINLOCK_H
#define PVLOCK_GENERIC_ASM_QSPINLOCK_H
#include <pvlock/kernel.h>
#include <asm-generic/qspinlock_types.h>

extern void native_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val);
extern void __pv_init_lock_hash(void);
extern void __pv_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val);
extern void __pv_queued_spin_unlock(struct qspinlock *lock);

/* Macros, not functions, so that each call is a site with the caller's
 * file:line (pvlock/sites.h). */
#define pv_wait(ptr, val) do {						\
	u8 *__pvl_wp = (ptr);						\
	u8 __pvl_wv = (val);						\
	PVLOCK_SITE(PVL_OP_PV_WAIT, 1, __pvl_wp, __pvl_wv);		\
	pvlock_svc.pv_wait(__pvl_wp, __pvl_wv);				\
} while (0)
#define pv_kick(cpu) do {						\
	int __pvl_kc = (cpu);						\
	PVLOCK_SITE(PVL_OP_PV_KICK, 0, 0, __pvl_kc);			\
	pvlock_svc.pv_kick(__pvl_kc);					\
} while (0)

#define vcpu_is_preempted vcpu_is_preempted
static __always_inline bool vcpu_is_preempted(long cpu)
{
	return pvlock_svc.vcpu_is_preempted(cpu);
}

#include <asm-generic/qspinlock.h>
#endif
