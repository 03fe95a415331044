/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvlock stand-ins for the kernel interfaces kernel/locking/qspinlock.c
 * uses, written for pvlock to the kernel's documented semantics (no kernel
 * text): types, compiler attributes, barriers and atomics, per-CPU data,
 * BUG/WARN, and the hooks into the pvlock guest (pvlock/module.h).
 *
 * Memory ordering: every operation keeps its kernel meaning (see
 * docs/KERNEL-BUILDS.md for the table). The guest is x86-64 only, so the
 * x86 choices apply: smp_rmb/smp_wmb and smp_mb__{before,after}_atomic are
 * compiler barriers, because x86 orders loads with loads, stores with
 * stores, and every lock-prefixed RMW is a full barrier.
 */
#ifndef PVLOCK_KERNEL_H
#define PVLOCK_KERNEL_H

/* ------------------------------------------------------------ types -- */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
typedef u8 __u8;
typedef u16 __u16;
typedef u32 __u32;
typedef u64 __u64;
typedef unsigned long size_t;
typedef long ssize_t;
typedef long long loff_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define BITS_PER_LONG 64
#define __LITTLE_ENDIAN 1234
#define CONFIG_64BIT 1
#define CONFIG_X86_64 1
#define SMP_CACHE_BYTES 64
#define L1_CACHE_BYTES 64
#define PAGE_SIZE 4096UL
#define EBADF 9
/* arch/x86/include/asm/spinlock.h's value; the build may override it. */
#ifndef SPIN_THRESHOLD
#define SPIN_THRESHOLD (1 << 15)
#endif

#ifndef CONFIG_NR_CPUS
#error "pvlock: CONFIG_NR_CPUS must be set by the build"
#endif

/* -------------------------------------------------------- compiler -- */
#define __always_inline inline __attribute__((__always_inline__))
#define noinline __attribute__((__noinline__))
#define __noreturn __attribute__((__noreturn__))
#define __pure __attribute__((__pure__))
#define __visible __attribute__((__externally_visible__))
#define __used __attribute__((__used__))
#define __aligned(x) __attribute__((__aligned__(x)))
#define __section(s) __attribute__((__section__(s)))
#define __init
#define __initdata
#define __read_mostly
#define __user
#define __percpu
#define __lockfunc __section(".spinlock.text")
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define barrier() __asm__ __volatile__("" ::: "memory")
#define __stringify_1(x...) #x
#define __stringify(x...) __stringify_1(x)
#define ALIGN(x, a) (((x) + (a) - 1) & ~((__typeof__(x))(a) - 1))
#define DIV_ROUND_CLOSEST_ULL(x, d) (((x) + (d) / 2) / (d))
#define do_div(n, base) ({ u32 __rem = (u64)(n) % (base); (n) = (u64)(n) / (base); __rem; })
#define BUILD_BUG_ON(cond) _Static_assert(!(cond), "BUILD_BUG_ON(" #cond ")")
#define EXPORT_SYMBOL(sym)
#define EXPORT_SYMBOL_GPL(sym)
#define early_param(name, fn)
#define kcsan_release() do { } while (0)
#define prefetch(x) __builtin_prefetch(x)
#define prefetchw(x) __builtin_prefetch(x, 1)

/* x86 asm helpers the arch headers expect from asm/asm.h, asm/alternative.h. */
#define LOCK_PREFIX "\n\tlock; "
#define CC_SET(c) "\n\t/* output condition code " #c "*/\n"
#define CC_OUT(c) "=@cc" #c

/* Every shared-memory operation below is a site (pvlock/sites.h): a
 * static descriptor with the caller's file:line and function, and a check
 * of its flags byte before the operation. The operation itself is
 * unchanged (the ordering column of docs/KERNEL-BUILDS.md). */
#include <pvlock/sites.h>

/* Raw single accesses, for the stand-ins' own use inside one site. */
#define __pvl_read_raw(p) (*(const volatile __typeof__(*(p)) *)(p))

/* READ_ONCE / WRITE_ONCE: one volatile access each, as the kernel's. */
#define READ_ONCE(x) ({							\
	const volatile __typeof__(x) *__pvl_ra = &(x);			\
	PVLOCK_SITE(PVL_OP_READ_ONCE, sizeof(x), __pvl_ra, 0);		\
	*__pvl_ra;							\
})
#define WRITE_ONCE(x, val) do {						\
	volatile __typeof__(x) *__pvl_wa = &(x);			\
	__typeof__(x) __pvl_wv = (val);					\
	PVLOCK_SITE(PVL_OP_WRITE_ONCE, sizeof(x), __pvl_wa, __pvl_wv);	\
	*__pvl_wa = __pvl_wv;						\
} while (0)

/* --------------------------------------------------------- barriers -- */
#define smp_mb() ({ PVLOCK_SITE_FENCE(PVL_OP_MB); __atomic_thread_fence(__ATOMIC_SEQ_CST); })
#define smp_rmb() ({ PVLOCK_SITE_FENCE(PVL_OP_RMB); barrier(); })
#define smp_wmb() ({ PVLOCK_SITE_FENCE(PVL_OP_WMB); barrier(); })
#define smp_mb__before_atomic() ({ PVLOCK_SITE_FENCE(PVL_OP_MB_BEFORE_ATOMIC); barrier(); })
#define smp_mb__after_atomic() ({ PVLOCK_SITE_FENCE(PVL_OP_MB_AFTER_ATOMIC); barrier(); })
#define smp_acquire__after_ctrl_dep() smp_rmb()
#define smp_store_release(p, v) do {					\
	__typeof__(p) __pvl_sp = (p);					\
	__typeof__(*__pvl_sp) __pvl_sv = (v);				\
	PVLOCK_SITE_PTR(PVL_OP_STORE_RELEASE, __pvl_sp, __pvl_sv);	\
	__atomic_store_n(__pvl_sp, __pvl_sv, __ATOMIC_RELEASE);		\
} while (0)
#define smp_load_acquire(p) ({						\
	__typeof__(p) __pvl_lp = (p);					\
	PVLOCK_SITE_PTR(PVL_OP_LOAD_ACQUIRE, __pvl_lp, 0);		\
	__atomic_load_n(__pvl_lp, __ATOMIC_ACQUIRE);			\
})
/* x86: xchg, a full barrier. */
#define smp_store_mb(var, value) do {					\
	__typeof__(&(var)) __pvl_mp = &(var);				\
	__typeof__(var) __pvl_mv = (value);				\
	PVLOCK_SITE_PTR(PVL_OP_STORE_MB, __pvl_mp, __pvl_mv);		\
	(void)__atomic_exchange_n(__pvl_mp, __pvl_mv, __ATOMIC_SEQ_CST);	\
} while (0)

/* One spin-wait iteration: pause, and a point where the pvlock guest may
 * run a simulated interrupt handler (the slow path runs with interrupts
 * enabled in the kernel, so a handler may arrive at any of these). */
static inline void cpu_relax(void);

/* asm-generic's spin loops: re-read until the condition holds; each read
 * is the loop's site (a stall there is a preemption of the spinner). */
#define smp_cond_load_relaxed(ptr, cond_expr) ({			\
	__typeof__(ptr) __PTR = (ptr);					\
	__typeof__(*__PTR) VAL;						\
	for (;;) {							\
		PVLOCK_SITE_PTR(PVL_OP_COND_LOAD, __PTR, 0);		\
		VAL = __pvl_read_raw(__PTR);				\
		if (cond_expr)						\
			break;						\
		cpu_relax();						\
	}								\
	VAL;								\
})
#define smp_cond_load_acquire(ptr, cond_expr) ({			\
	__typeof__(ptr) __PTR = (ptr);					\
	__typeof__(*__PTR) VAL;						\
	for (;;) {							\
		PVLOCK_SITE_PTR(PVL_OP_COND_LOAD, __PTR, 0);		\
		VAL = __atomic_load_n(__PTR, __ATOMIC_ACQUIRE);		\
		if (cond_expr)						\
			break;						\
		cpu_relax();						\
	}								\
	VAL;								\
})

/* ----------------------------------------------------- cmpxchg/xchg -- */
/* Value-returning RMWs without a suffix are fully ordered; _acquire,
 * _release, _relaxed are what they say; a failed cmpxchg orders nothing. */
#define __pvl_cmpxchg(ptr, old, new, mo) ({				\
	__typeof__(ptr) __pvl_cp = (ptr);				\
	__typeof__(*__pvl_cp) __o = (old);				\
	__typeof__(*__pvl_cp) __pvl_cn = (new);				\
	PVLOCK_SITE_PTR(PVL_OP_CMPXCHG, __pvl_cp, __pvl_cn);		\
	(void)__atomic_compare_exchange_n(__pvl_cp, &__o, __pvl_cn, 0, (mo), \
					  __ATOMIC_RELAXED);		\
	__o;								\
})
#define cmpxchg(p, o, n) __pvl_cmpxchg(p, o, n, __ATOMIC_SEQ_CST)
#define cmpxchg_acquire(p, o, n) __pvl_cmpxchg(p, o, n, __ATOMIC_ACQUIRE)
#define cmpxchg_release(p, o, n) __pvl_cmpxchg(p, o, n, __ATOMIC_RELEASE)
#define cmpxchg_relaxed(p, o, n) __pvl_cmpxchg(p, o, n, __ATOMIC_RELAXED)
#define __pvl_try_cmpxchg(ptr, oldp, new, mo) ({			\
	__typeof__(ptr) __pvl_tp = (ptr);				\
	__typeof__(*__pvl_tp) __pvl_tn = (new);				\
	PVLOCK_SITE_PTR(PVL_OP_CMPXCHG, __pvl_tp, __pvl_tn);		\
	__atomic_compare_exchange_n(__pvl_tp, (oldp), __pvl_tn, 0, (mo), __ATOMIC_RELAXED); \
})
#define try_cmpxchg(p, o, n) __pvl_try_cmpxchg(p, o, n, __ATOMIC_SEQ_CST)
#define try_cmpxchg_acquire(p, o, n) __pvl_try_cmpxchg(p, o, n, __ATOMIC_ACQUIRE)
#define try_cmpxchg_release(p, o, n) __pvl_try_cmpxchg(p, o, n, __ATOMIC_RELEASE)
#define try_cmpxchg_relaxed(p, o, n) __pvl_try_cmpxchg(p, o, n, __ATOMIC_RELAXED)
#define __pvl_xchg(ptr, v, mo) ({					\
	__typeof__(ptr) __pvl_xp = (ptr);				\
	__typeof__(*__pvl_xp) __pvl_xv = (v);				\
	PVLOCK_SITE_PTR(PVL_OP_XCHG, __pvl_xp, __pvl_xv);		\
	__atomic_exchange_n(__pvl_xp, __pvl_xv, (mo));			\
})
#define xchg(p, v) __pvl_xchg(p, v, __ATOMIC_SEQ_CST)
#define xchg_acquire(p, v) __pvl_xchg(p, v, __ATOMIC_ACQUIRE)
#define xchg_release(p, v) __pvl_xchg(p, v, __ATOMIC_RELEASE)
#define xchg_relaxed(p, v) __pvl_xchg(p, v, __ATOMIC_RELAXED)

/* ----------------------------------------------------------- atomic_t -- */
typedef struct { int counter; } atomic_t;
#define ATOMIC_INIT(i) { (i) }
#define atomic_read(v) ({						\
	const volatile int *__pvl_ar = &(v)->counter;			\
	PVLOCK_SITE(PVL_OP_ATOMIC_READ, 4, __pvl_ar, 0);		\
	*__pvl_ar;							\
})
#define atomic_read_acquire(v) smp_load_acquire(&(v)->counter)
#define atomic_set(v, i) do {						\
	volatile int *__pvl_as = &(v)->counter;				\
	int __pvl_asv = (i);						\
	PVLOCK_SITE(PVL_OP_ATOMIC_SET, 4, __pvl_as, __pvl_asv);		\
	*__pvl_as = __pvl_asv;						\
} while (0)
#define atomic_set_release(v, i) smp_store_release(&(v)->counter, (i))
/* One read-modify-write of v->counter with `op` (a __atomic_fetch_*). */
#define __pvl_atomic_rmw(fetch, i, v, mo) ({				\
	int *__pvl_rp = &(v)->counter;					\
	int __pvl_ri = (i);						\
	PVLOCK_SITE(PVL_OP_ATOMIC_RMW, 4, __pvl_rp, __pvl_ri);		\
	fetch(__pvl_rp, __pvl_ri, (mo));				\
})
/* Void RMWs order nothing. */
#define atomic_add(i, v) ((void)__pvl_atomic_rmw(__atomic_fetch_add, (i), v, __ATOMIC_RELAXED))
#define atomic_sub(i, v) ((void)__pvl_atomic_rmw(__atomic_fetch_sub, (i), v, __ATOMIC_RELAXED))
#define atomic_or(i, v) ((void)__pvl_atomic_rmw(__atomic_fetch_or, (i), v, __ATOMIC_RELAXED))
#define atomic_and(i, v) ((void)__pvl_atomic_rmw(__atomic_fetch_and, (i), v, __ATOMIC_RELAXED))
#define atomic_andnot(i, v) ((void)__pvl_atomic_rmw(__atomic_fetch_and, ~(int)(i), v, __ATOMIC_RELAXED))
#define atomic_fetch_or(i, v) __pvl_atomic_rmw(__atomic_fetch_or, (i), v, __ATOMIC_SEQ_CST)
#define atomic_fetch_or_acquire(i, v) __pvl_atomic_rmw(__atomic_fetch_or, (i), v, __ATOMIC_ACQUIRE)
#define atomic_fetch_or_relaxed(i, v) __pvl_atomic_rmw(__atomic_fetch_or, (i), v, __ATOMIC_RELAXED)
#define atomic_fetch_add(i, v) __pvl_atomic_rmw(__atomic_fetch_add, (i), v, __ATOMIC_SEQ_CST)
#define atomic_fetch_add_acquire(i, v) __pvl_atomic_rmw(__atomic_fetch_add, (i), v, __ATOMIC_ACQUIRE)
#define atomic_xchg(v, i) xchg(&(v)->counter, (i))
#define atomic_xchg_relaxed(v, i) xchg_relaxed(&(v)->counter, (i))
#define atomic_cmpxchg(v, o, n) cmpxchg(&(v)->counter, (o), (n))
#define atomic_cmpxchg_acquire(v, o, n) cmpxchg_acquire(&(v)->counter, (o), (n))
#define atomic_cmpxchg_release(v, o, n) cmpxchg_release(&(v)->counter, (o), (n))
#define atomic_cmpxchg_relaxed(v, o, n) cmpxchg_relaxed(&(v)->counter, (o), (n))
#define atomic_try_cmpxchg(v, o, n) try_cmpxchg(&(v)->counter, (o), (n))
#define atomic_try_cmpxchg_acquire(v, o, n) try_cmpxchg_acquire(&(v)->counter, (o), (n))
#define atomic_try_cmpxchg_release(v, o, n) try_cmpxchg_release(&(v)->counter, (o), (n))
#define atomic_try_cmpxchg_relaxed(v, o, n) try_cmpxchg_relaxed(&(v)->counter, (o), (n))
#define atomic_cond_read_relaxed(v, c) smp_cond_load_relaxed(&(v)->counter, (c))
#define atomic_cond_read_acquire(v, c) smp_cond_load_acquire(&(v)->counter, (c))
/* 4.5-4.7's spelling of the acquire spin. */
#define smp_cond_acquire(cond) do { while (!(cond)) cpu_relax(); smp_rmb(); } while (0)

/* ------------------------------------------------------ the guest -- */
#include <pvlock/module.h>

static inline void cpu_relax(void)
{
	pvlock_svc.cpu_relax();
}

/* The vCPU index: the guest gives vCPU n the stack ending at
 * ram_top - n * stack_size (pvlock_abi::stack_top), so it follows from rsp
 * without any per-CPU register (the guest has no %gs base). */
static __always_inline int smp_processor_id(void)
{
	unsigned long sp;

	__asm__("mov %%rsp, %0" : "=r"(sp));
	return (int)((pvlock_ram_top - sp) >> pvlock_stack_shift);
}
#define raw_smp_processor_id() smp_processor_id()

static inline unsigned int num_possible_cpus(void)
{
	return pvlock_nr_cpus;
}
#define for_each_possible_cpu(cpu) for ((cpu) = 0; (cpu) < (int)pvlock_nr_cpus; (cpu)++)

static inline u64 sched_clock(void)
{
	return pvlock_svc.sched_clock_ns();
}

/* ---------------------------------------------------------- per-CPU -- */
/* Per-CPU variables live in .data..percpu (the template); pvlock_kmod_init
 * copies it once per vCPU and __per_cpu_offset[cpu] is the distance from
 * the template to vCPU cpu's copy, as in the kernel. */
extern unsigned long __per_cpu_offset[CONFIG_NR_CPUS];
#define DECLARE_PER_CPU(type, name) extern __typeof__(type) name
#define DEFINE_PER_CPU(type, name) __section(".data..percpu") __typeof__(type) name
#define DEFINE_PER_CPU_ALIGNED(type, name) \
	__section(".data..percpu") __aligned(SMP_CACHE_BYTES) __typeof__(type) name
#define per_cpu_ptr(ptr, cpu) ((__typeof__(ptr))((unsigned long)(ptr) + __per_cpu_offset[(cpu)]))
#define per_cpu(var, cpu) (*per_cpu_ptr(&(var), (cpu)))
#define this_cpu_ptr(ptr) per_cpu_ptr((ptr), smp_processor_id())
#define raw_cpu_ptr(ptr) this_cpu_ptr(ptr)
/* The kernel's are single %gs-relative instructions, never torn by an
 * interrupt; here a simulated interrupt only runs at cpu_relax(), which
 * none of these calls, so a plain read-modify-write is equally whole. */
#define this_cpu_read(pcp) (*this_cpu_ptr(&(pcp)))
#define this_cpu_write(pcp, v) (*this_cpu_ptr(&(pcp)) = (v))
#define this_cpu_add(pcp, v) (*this_cpu_ptr(&(pcp)) += (v))
#define this_cpu_inc(pcp) this_cpu_add(pcp, 1)
#define raw_cpu_add(pcp, v) this_cpu_add(pcp, v)
#define raw_cpu_inc(pcp) this_cpu_add(pcp, 1)
#define __this_cpu_add(pcp, v) this_cpu_add(pcp, v)
#define __this_cpu_inc(pcp) this_cpu_add(pcp, 1)
#define __this_cpu_dec(pcp) this_cpu_add(pcp, -1)
#define __this_cpu_read(pcp) this_cpu_read(pcp)

/* --------------------------------------------------------- BUG/WARN -- */
/* __FILE__ is the tree-relative path (the build maps the private copy's
 * prefix away), so reports name the kernel's own file:line. */
#define BUG() pvlock_bug(__FILE__, __LINE__, "BUG()")
#define BUG_ON(cond) do { if (unlikely(cond)) pvlock_bug(__FILE__, __LINE__, "BUG_ON(" #cond ")"); } while (0)
/* The message is passed as written (its format string): the guest has no
 * printf, and the arguments are not needed to locate the warning. */
#define WARN(cond, fmt...) ({						\
	int __ret_warn = !!(cond);					\
	if (unlikely(__ret_warn))					\
		pvlock_warn(__FILE__, __LINE__, pvlock_first_arg(fmt));	\
	unlikely(__ret_warn);						\
})
#define pvlock_first_arg(a, ...) (a)
#define WARN_ON(cond) ({						\
	int __ret_warn = !!(cond);					\
	if (unlikely(__ret_warn))					\
		pvlock_warn(__FILE__, __LINE__, "WARN_ON(" #cond ")");	\
	unlikely(__ret_warn);						\
})
#define WARN_ON_ONCE(cond) WARN_ON(cond)
#define WARN_ONCE(cond, fmt...) WARN(cond, fmt)

/* -------------------------------------- what only lockevent_read uses -- */
/* lockevent_read() is compiled but never called in the guest (there is no
 * debugfs); these make any call of it fail loudly. */
struct inode { void *i_private; };
struct file { struct inode *f_inode; };
static inline struct inode *file_inode(const struct file *f)
{
	return f->f_inode;
}
static inline int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	(void)buf; (void)size; (void)fmt;
	pvlock_bug(__FILE__, __LINE__, "snprintf is not available in the pvlock guest");
}
static inline ssize_t simple_read_from_buffer(void __user *to, size_t count, loff_t *ppos,
					      const void *from, size_t available)
{
	(void)to; (void)count; (void)ppos; (void)from; (void)available;
	pvlock_bug(__FILE__, __LINE__, "simple_read_from_buffer is not available in the pvlock guest");
}

/* ------------------------------------------------------------ misc -- */
static inline void trace_contention_begin(void *lock, unsigned int flags) { (void)lock; (void)flags; }
static inline void trace_contention_end(void *lock, int ret) { (void)lock; (void)ret; }
#define LCB_F_SPIN (1U << 0)

static const int debug_locks_silent;

/* alloc_large_system_hash() as __pv_init_lock_hash() calls it: one table
 * from the module's static storage, zeroed, its log2 size in *_hash_shift. */
#define HASH_EARLY 0x00000001
#define HASH_ZERO 0x00000002
void *alloc_large_system_hash(const char *tablename, unsigned long bucketsize,
			      unsigned long numentries, int scale, int flags,
			      unsigned int *_hash_shift, unsigned int *_hash_mask,
			      unsigned long low_limit, unsigned long high_limit);

/* Static keys, as plain flags read each time (the kernel patches code). */
struct static_key { int enabled; };
struct static_key_true { struct static_key key; };
struct static_key_false { struct static_key key; };
#define DECLARE_STATIC_KEY_TRUE(name) extern struct static_key_true name
#define DECLARE_STATIC_KEY_FALSE(name) extern struct static_key_false name
#define DEFINE_STATIC_KEY_TRUE(name) struct static_key_true name = { { 1 } }
#define DEFINE_STATIC_KEY_FALSE(name) struct static_key_false name = { { 0 } }
/* Not sites: the kernel patches code for these, it reads no shared memory. */
#define static_branch_likely(x) likely(__pvl_read_raw(&(x)->key.enabled))
#define static_branch_unlikely(x) unlikely(__pvl_read_raw(&(x)->key.enabled))
#define static_key_enabled(x) __pvl_read_raw(&(x)->key.enabled)

#endif /* PVLOCK_KERNEL_H */
