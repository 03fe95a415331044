// SPDX-License-Identifier: GPL-2.0
/*
 * The pvlock kernel-lock module: a user's kernel/locking/qspinlock.c,
 * compiled unmodified (patches applied to a private copy) and included
 * here, plus what a kernel would provide around it: per-CPU areas, the PV
 * hash table's memory, the lock event counters, and the descriptor at the
 * start of the image through which the guest binds the module and the VMM
 * finds the tree's hash table, nodes and states.
 */
#include <pvlock/kernel.h>
#include <kernel/locking/qspinlock.c>

/* 6.15+ spells the node count _Q_MAX_NODES (kernel/locking/qspinlock.h). */
#if !defined(MAX_NODES) && defined(_Q_MAX_NODES)
#define MAX_NODES _Q_MAX_NODES
#endif

#ifndef PVLOCK_FLAVOUR_X86
#define PVLOCK_FLAVOUR_X86 0
#endif

struct pvlock_ksvc pvlock_svc;
unsigned long pvlock_ram_top;
unsigned int pvlock_stack_shift;
unsigned int pvlock_nr_cpus;
u64 pvlock_kernel_warnings;
struct pvlock_site_params pvlock_site_params;

/* The site table, from module.ld. */
extern struct pvlock_site __pvlock_sites_start[], __pvlock_sites_end[];

unsigned long __per_cpu_offset[CONFIG_NR_CPUS];

/* The per-CPU template (.data..percpu) and one copy per CPU. */
extern char __per_cpu_start[], __per_cpu_end[];
#define PVLOCK_PERCPU_AREA 4096
static char pvlock_percpu_areas[CONFIG_NR_CPUS][PVLOCK_PERCPU_AREA] __aligned(PVLOCK_PERCPU_AREA);

#ifdef CONFIG_LOCK_EVENT_COUNTS
/* lock_events.c's counters (per CPU), and their names in enum order. */
DEFINE_PER_CPU(unsigned long, lockevents[lockevent_num]);
#undef LOCK_EVENT
#define LOCK_EVENT(name) #name,
static const char *const pvlock_lockevent_names[] = {
#include <kernel/locking/lock_events_list.h>
};
#define PVLOCK_NR_LOCKEVENTS ((u32)lockevent_num)
#define PVLOCK_LOCKEVENTS ((u64)(unsigned long)&lockevents[0])
#define PVLOCK_LOCKEVENT_NAMES ((u64)(unsigned long)pvlock_lockevent_names)
#else
#define PVLOCK_NR_LOCKEVENTS 0U
#define PVLOCK_LOCKEVENTS 0ULL
#define PVLOCK_LOCKEVENT_NAMES 0ULL
#endif

/* Storage for alloc_large_system_hash(): __pv_init_lock_hash() asks for
 * max(4 * nr_cpus rounded to a cache line, one page) entries. */
static struct pv_hash_entry pvlock_hash_storage[PVLOCK_HASH_MAX_ENTRIES] __aligned(PAGE_SIZE);

void *alloc_large_system_hash(const char *tablename, unsigned long bucketsize,
			      unsigned long numentries, int scale, int flags,
			      unsigned int *_hash_shift, unsigned int *_hash_mask,
			      unsigned long low_limit, unsigned long high_limit)
{
	unsigned int shift = 0;
	unsigned long i;
	char *p = (char *)pvlock_hash_storage;

	(void)tablename; (void)scale; (void)flags; (void)low_limit; (void)high_limit;
	/* The kernel rounds the entry count up to a power of two. */
	while ((1UL << shift) < numentries)
		shift++;
	if (bucketsize != sizeof(struct pv_hash_entry) ||
	    (1UL << shift) > PVLOCK_HASH_MAX_ENTRIES)
		pvlock_bug(__FILE__, __LINE__, "alloc_large_system_hash: table larger than the module's storage");
	for (i = 0; i < (bucketsize << shift); i++)
		p[i] = 0;
	if (_hash_shift)
		*_hash_shift = shift;
	if (_hash_mask)
		*_hash_mask = (1U << shift) - 1;
	return pvlock_hash_storage;
}

#if PVLOCK_FLAVOUR_X86
/* The key's type is whatever the tree declares (true in 6.1, false in
 * 6.12); pvlock_kmod_init() clears it: a PV guest with PV spinlocks does
 * not take the test-and-set fallback. */
__typeof__(virt_spin_lock_key) virt_spin_lock_key;
#endif

/* Returns 0, or a negative number naming what is wrong. */
static int pvlock_kmod_init(const struct pvlock_ksvc *svc, u32 nr_cpus, u64 ram_top, u32 stack_shift)
{
	unsigned long size = (unsigned long)(__per_cpu_end - __per_cpu_start);
	u32 cpu;
	unsigned long i;

	pvlock_svc = *svc;
	if (nr_cpus == 0 || nr_cpus > CONFIG_NR_CPUS)
		return -1;
	if (size > PVLOCK_PERCPU_AREA)
		return -2;
	pvlock_nr_cpus = nr_cpus;
	pvlock_ram_top = ram_top;
	pvlock_stack_shift = stack_shift;
	for (cpu = 0; cpu < CONFIG_NR_CPUS; cpu++) {
		for (i = 0; i < size; i++)
			pvlock_percpu_areas[cpu][i] = __per_cpu_start[i];
		__per_cpu_offset[cpu] = (unsigned long)pvlock_percpu_areas[cpu] - (unsigned long)__per_cpu_start;
	}
#if PVLOCK_FLAVOUR_X86
	virt_spin_lock_key.key.enabled = 0;
#endif
	__pv_init_lock_hash();
	return 0;
}

/* The unlock of a kernel built without PV spinlocks (the x86 flavour's
 * native_queued_spin_unlock, asm-generic's queued_spin_unlock). */
static void pvlock_native_unlock(struct qspinlock *lock)
{
#if PVLOCK_FLAVOUR_X86
	native_queued_spin_unlock(lock);
#else
	queued_spin_unlock(lock);
#endif
}

#if PVLOCK_FLAVOUR_X86
#define PVLOCK_PV_UNLOCK __raw_callee_save___pv_queued_spin_unlock
#else
#define PVLOCK_PV_UNLOCK __pv_queued_spin_unlock
#endif

#define OFF(type, field) ((u32)__builtin_offsetof(type, field))

__attribute__((__section__(".pvlock.descriptor"), __used__))
const struct pvlock_kmod pvlock_kmod_descriptor = {
	.magic = PVLOCK_KMOD_MAGIC,
	.version = PVLOCK_KMOD_VERSION,
	.size = sizeof(struct pvlock_kmod),
	.init = (u64)(unsigned long)pvlock_kmod_init,
	.native_slowpath = (u64)(unsigned long)native_queued_spin_lock_slowpath,
	.pv_slowpath = (u64)(unsigned long)__pv_queued_spin_lock_slowpath,
	.native_unlock = (u64)(unsigned long)pvlock_native_unlock,
	.pv_unlock = (u64)(unsigned long)PVLOCK_PV_UNLOCK,
	.hash_table_var = (u64)(unsigned long)&pv_lock_hash,
	.hash_bits_var = (u64)(unsigned long)&pv_lock_hash_bits,
	.per_cpu_offset = (u64)(unsigned long)&__per_cpu_offset[0],
	.qnodes = (u64)(unsigned long)&qnodes[0],
	.lockevents = PVLOCK_LOCKEVENTS,
	.lockevent_names = PVLOCK_LOCKEVENT_NAMES,
	.warnings = (u64)(unsigned long)&pvlock_kernel_warnings,
	.nr_lockevents = PVLOCK_NR_LOCKEVENTS,
	.nr_cpus_max = CONFIG_NR_CPUS,
	.hash_entry_size = sizeof(struct pv_hash_entry),
	.hash_entry_lock_off = OFF(struct pv_hash_entry, lock),
	.hash_entry_node_off = OFF(struct pv_hash_entry, node),
	.qnode_size = sizeof(struct qnode),
	.max_nodes = MAX_NODES,
	.mcs_next_off = OFF(struct mcs_spinlock, next),
	.mcs_locked_off = OFF(struct mcs_spinlock, locked),
	.mcs_count_off = OFF(struct mcs_spinlock, count),
	.pv_node_cpu_off = OFF(struct pv_node, cpu),
	.pv_node_state_off = OFF(struct pv_node, state),
	.spin_threshold = SPIN_THRESHOLD,
	.vcpu_running = vcpu_running,
	.vcpu_halted = vcpu_halted,
	.vcpu_hashed = vcpu_hashed,
	.q_locked_val = _Q_LOCKED_VAL,
	.q_slow_val = _Q_SLOW_VAL,
	.q_pending_bits = _Q_PENDING_BITS,
	.flavour_x86 = PVLOCK_FLAVOUR_X86,
	.sites_start = (u64)(unsigned long)__pvlock_sites_start,
	.sites_end = (u64)(unsigned long)__pvlock_sites_end,
	.site_params = (u64)(unsigned long)&pvlock_site_params,
	.site_size = sizeof(struct pvlock_site),
};

_Static_assert(sizeof(struct pvlock_site) == 24, "struct pvlock_site does not match pvlock_abi::sites");
_Static_assert(sizeof(struct pvlock_site_params) == 8 + 4 * PVLOCK_SITE_MAX_CPUS + 4 * PVLOCK_HASH_MAX_ENTRIES, "struct pvlock_site_params does not match pvlock_abi::sites");
_Static_assert(CONFIG_NR_CPUS <= PVLOCK_SITE_MAX_CPUS, "CONFIG_NR_CPUS above the site state's vCPUs");

/* pvlock_abi::kmod checks the same sizes on the Rust side. */
_Static_assert(sizeof(struct pvlock_kmod) == 208, "struct pvlock_kmod does not match pvlock_abi::kmod");
_Static_assert(sizeof(struct pvlock_ksvc) == 8 * 8, "struct pvlock_ksvc does not match pvlock_abi::kmod");
