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

static __always_inline void pv_wait(u8 *ptr, u8 val)
{
	pvlock_svc.pv_wait(ptr, val);
}

static __always_inline void pv_kick(int cpu)
{
	pvlock_svc.pv_kick(cpu);
}

#define vcpu_is_preempted vcpu_is_preempted
static __always_inline bool vcpu_is_preempted(long cpu)
{
	return pvlock_svc.vcpu_is_preempted(cpu);
}

#include <asm-generic/qspinlock.h>
#endif
