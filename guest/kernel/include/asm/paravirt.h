/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvlock stand-in for <asm/paravirt.h> as arch/x86's qspinlock headers use
 * it: the PV lock operations of a KVM guest (pv_wait/pv_kick through the
 * pvlock doorbells, vcpu_is_preempted from the VMM's flag), the callee-save
 * thunk and asm-function helpers the x86 unlock is built with.
 */
#ifndef PVLOCK_ASM_PARAVIRT_H
#define PVLOCK_ASM_PARAVIRT_H
#include <pvlock/kernel.h>

struct qspinlock;
extern void __pv_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val);
extern void __raw_callee_save___pv_queued_spin_unlock(struct qspinlock *lock);

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

static __always_inline bool pv_vcpu_is_preempted(long cpu)
{
	return pvlock_svc.vcpu_is_preempted(cpu);
}

/* pv_ops.lock as kvm_spinlock_init() sets it; only asm-generic's
 * queued_spin_lock()/unlock() would call these, and pvlock's fast paths
 * call the module's entry points instead. */
static __always_inline void pv_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val)
{
	__pv_queued_spin_lock_slowpath(lock, val);
}

static __always_inline void pv_queued_spin_unlock(struct qspinlock *lock)
{
	__raw_callee_save___pv_queued_spin_unlock(lock);
}

/* No frame pointers, no IBT, no return thunks in the guest. */
#define FRAME_BEGIN
#define FRAME_END
#define ASM_ENDBR
#define ASM_RET "ret\n\t"
#define ASM_FUNC_ALIGN ".balign 16\n\t"

/* A function written in asm, in section sec. */
#define DEFINE_ASM_FUNC(func, instr, sec)				\
	__asm__(".pushsection " #sec ", \"ax\"\n\t"			\
		".globl " #func "\n\t"					\
		".type " #func ", @function\n\t"			\
		ASM_FUNC_ALIGN						\
		#func ":\n\t"						\
		instr "\n\t"						\
		ASM_RET							\
		".size " #func ", . - " #func "\n\t"			\
		".popsection")

/* __raw_callee_save_<func>: calls func preserving every caller-saved
 * register but rax (the x86-64 PV callee-save convention). Eight pushes
 * keep the stack alignment the caller had. */
#define PV_SAVE_ALL_CALLER_REGS						\
	"push %rcx\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n\t"		\
	"push %r8\n\tpush %r9\n\tpush %r10\n\tpush %r11\n\t"
#define PV_RESTORE_ALL_CALLER_REGS					\
	"pop %r11\n\tpop %r10\n\tpop %r9\n\tpop %r8\n\t"		\
	"pop %rdi\n\tpop %rsi\n\tpop %rdx\n\tpop %rcx\n\t"
#define __PV_CALLEE_SAVE_REGS_THUNK(func, section)			\
	extern __typeof__(func) __raw_callee_save_##func;		\
	__asm__(".pushsection " section ", \"ax\"\n\t"			\
		".globl __raw_callee_save_" #func "\n\t"		\
		".type __raw_callee_save_" #func ", @function\n\t"	\
		ASM_FUNC_ALIGN						\
		"__raw_callee_save_" #func ":\n\t"			\
		PV_SAVE_ALL_CALLER_REGS					\
		"call " #func "\n\t"					\
		PV_RESTORE_ALL_CALLER_REGS				\
		ASM_RET							\
		".size __raw_callee_save_" #func ", . - __raw_callee_save_" #func "\n\t" \
		".popsection")
#define PV_CALLEE_SAVE_REGS_THUNK(func) __PV_CALLEE_SAVE_REGS_THUNK(func, ".text")

#endif /* PVLOCK_ASM_PARAVIRT_H */
