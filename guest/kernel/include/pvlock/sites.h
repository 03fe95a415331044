/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Sites: every shared-memory operation the kernel code performs through the
 * stand-ins (READ_ONCE, WRITE_ONCE, the atomics, cmpxchg/xchg, barriers,
 * the cond-load spins, pv_wait, pv_kick) carries a static descriptor in the
 * module's `pvlock_sites` section: its file:line (the tree's, __FILE__ is
 * tree-relative), function, operation kind and access size. The harness
 * reads the table from the image (`pvlock list sites`); before a run the
 * VMM writes each descriptor's `flags` byte, and the guest's site service
 * (pvlock_svc.site) decides at run time, from the vCPU's seeded stream,
 * whether to stall there (an exit, like a race window).
 *
 * A disabled site (flags == 0) costs one byte load and a predictable
 * branch. Mirrored by pvlock_abi::sites.
 */
#ifndef PVLOCK_SITES_H
#define PVLOCK_SITES_H

/* Operation kinds (pvlock_abi::sites::SiteOp). */
#define PVL_OP_READ_ONCE 0
#define PVL_OP_WRITE_ONCE 1
#define PVL_OP_LOAD_ACQUIRE 2
#define PVL_OP_STORE_RELEASE 3
#define PVL_OP_CMPXCHG 4
#define PVL_OP_XCHG 5
#define PVL_OP_ATOMIC_RMW 6
#define PVL_OP_ATOMIC_READ 7
#define PVL_OP_ATOMIC_SET 8
#define PVL_OP_MB 9
#define PVL_OP_RMB 10
#define PVL_OP_WMB 11
#define PVL_OP_MB_BEFORE_ATOMIC 12
#define PVL_OP_MB_AFTER_ATOMIC 13
#define PVL_OP_STORE_MB 14
#define PVL_OP_COND_LOAD 15
#define PVL_OP_PV_WAIT 16
#define PVL_OP_PV_KICK 17

struct pvlock_site {
	/* PVLOCK_SITE_* bits, written by the VMM before the run; 0: disabled. */
	u8 flags;
	u8 op;
	/* Bytes the operation touches (0: a fence or a call). */
	u8 size;
	u8 reserved;
	u32 line;
	const char *file;
	const char *func;
};

/* The descriptor of one site, placed in the site table; evaluates to its
 * address. The `volatile` read is the one load a disabled site costs (the
 * compiler must not fold the never-written-here flags to 0). */
#define __PVL_SITE_DESC(opk, sz)					\
	({								\
		static struct pvlock_site __pvl_site			\
		__attribute__((__section__("pvlock_sites"), __used__, __aligned__(8))) = { \
			.flags = 0, .op = (opk), .size = (sz),		\
			.line = __LINE__, .file = __FILE__, .func = __func__, \
		};							\
		&__pvl_site;						\
	})

/* A site touching `addr` (0: none); `val` is the value written (0 for a
 * read), which the guest's hash-table bookkeeping inspects. */
#ifndef PVLOCK_NO_SITES
#define PVLOCK_SITE(opk, sz, addr, val) do {				\
	struct pvlock_site *__pvl_s = __PVL_SITE_DESC((opk), (sz));	\
	if (__builtin_expect(*(volatile u8 *)&__pvl_s->flags, 0))	\
		pvlock_svc.site(__pvl_s, (unsigned long)(addr), (u64)(unsigned long)(val)); \
} while (0)
#else
/* Built without sites (lock.kernel_sites = false): the bench's baseline. */
#define PVLOCK_SITE(opk, sz, addr, val) do { (void)(addr); (void)(val); } while (0)
#endif

#define PVLOCK_SITE_PTR(opk, ptr, val) PVLOCK_SITE((opk), sizeof(*(ptr)), (ptr), (val))
#define PVLOCK_SITE_FENCE(opk) PVLOCK_SITE((opk), 0, 0, 0)

#endif /* PVLOCK_SITES_H */
