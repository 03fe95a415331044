/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The pvlock kernel-lock module interface: the descriptor a module image
 * starts with (read by the guest and the VMM) and the services the guest
 * hands to the module. Mirrored field for field by
 * pvlock_abi::kmod::{KmodDescriptor, KmodServices} (Rust); both sides
 * check the sizes.
 */
#ifndef PVLOCK_MODULE_H
#define PVLOCK_MODULE_H

/* "PVLKMOD1" */
#define PVLOCK_KMOD_MAGIC 0x31444f4d4b4c5650ULL
#define PVLOCK_KMOD_VERSION 2

/* Entry points the guest calls (guest C ABI). */
struct qspinlock;
struct pvlock_site;

/* What the guest provides; every call is made on the calling vCPU. */
struct pvlock_ksvc {
	/* pv_wait(): the WAIT doorbell (checked wait on *ptr == val). */
	void (*pv_wait)(u8 *ptr, u8 val);
	/* pv_kick(): the target vCPU's kick ioeventfd. */
	void (*pv_kick)(int cpu);
	/* The VMM's preempted flag of vCPU cpu. */
	bool (*vcpu_is_preempted)(long cpu);
	/* pause, and a simulated-interrupt point. */
	void (*cpu_relax)(void);
	/* BUG(): a guest panic record with the kernel's file:line; never returns. */
	void (*bug)(const char *file, u32 line, const char *msg);
	/* WARN(): a console warning and a counted kernel warning. */
	void (*warn)(const char *file, u32 line, const char *msg);
	/* A nanosecond clock (the TSC). */
	u64 (*sched_clock_ns)(void);
	/* An enabled site was reached (pvlock/sites.h): `addr` is the address
	 * it touches, `val` the value it writes (0 for reads and fences). */
	void (*site)(struct pvlock_site *site, unsigned long addr, u64 val);
};

/* Site run state in the module's memory (pvlock_abi::sites::SiteParams):
 * `prob` is written by the VMM before the run, `last_site` by the guest
 * (per vCPU: 1 + the index of the last tracked site it passed, 0: none),
 * and `hash_node_site` by the guest (per PV hash entry: the vCPU and site
 * that last wrote or read the entry's node, cpu << 24 | (index + 1)). */
#define PVLOCK_SITE_MAX_CPUS 64
/* Storage for alloc_large_system_hash(), in entries (pvlock_kmod.c). */
#define PVLOCK_HASH_MAX_ENTRIES 4096
struct pvlock_site_params {
	u32 prob;			/* stall probability, scaled to 2^32 */
	u32 nr_sites;
	u32 last_site[PVLOCK_SITE_MAX_CPUS];
	u32 hash_node_site[PVLOCK_HASH_MAX_ENTRIES];
};

struct pvlock_kmod {
	u64 magic;
	u32 version;
	u32 size;			/* sizeof(struct pvlock_kmod) */
	/* int init(const struct pvlock_ksvc *, u32 nr_cpus, u64 ram_top, u32 stack_shift) */
	u64 init;
	/* void (struct qspinlock *, u32 val): the tree's slow paths */
	u64 native_slowpath;
	u64 pv_slowpath;
	/* void (struct qspinlock *): the tree's unlocks */
	u64 native_unlock;
	u64 pv_unlock;
	/* Layout, for the VMM's checks and dumps. */
	u64 hash_table_var;		/* &pv_lock_hash (read after init) */
	u64 hash_bits_var;		/* &pv_lock_hash_bits (u32) */
	u64 per_cpu_offset;		/* &__per_cpu_offset[0] */
	u64 qnodes;			/* &qnodes[0] in the per-CPU template */
	u64 lockevents;			/* &lockevents[0] in the template, 0 if not counted */
	u64 lockevent_names;		/* const char *const [nr_lockevents] */
	u64 warnings;			/* &pvlock_kernel_warnings (u64) */
	u32 nr_lockevents;
	u32 nr_cpus_max;		/* CONFIG_NR_CPUS */
	u32 hash_entry_size;
	u32 hash_entry_lock_off;
	u32 hash_entry_node_off;
	u32 qnode_size;
	u32 max_nodes;
	u32 mcs_next_off;
	u32 mcs_locked_off;
	u32 mcs_count_off;
	u32 pv_node_cpu_off;
	u32 pv_node_state_off;
	u32 spin_threshold;		/* SPIN_THRESHOLD */
	u8 vcpu_running;
	u8 vcpu_halted;
	u8 vcpu_hashed;
	u8 q_locked_val;
	u8 q_slow_val;
	u8 q_pending_bits;
	u8 flavour_x86;			/* 1: arch/x86 headers, 0: asm-generic only */
	u8 reserved;
	/* The site table (section pvlock_sites) and its run state. */
	u64 sites_start;
	u64 sites_end;
	u64 site_params;		/* &pvlock_site_params */
	u32 site_size;			/* sizeof(struct pvlock_site) */
	u32 reserved2;
};

extern struct pvlock_ksvc pvlock_svc;
extern unsigned long pvlock_ram_top;
extern unsigned int pvlock_stack_shift;
extern unsigned int pvlock_nr_cpus;

static inline __attribute__((__noreturn__)) void pvlock_bug(const char *file, int line, const char *msg)
{
	pvlock_svc.bug(file, (u32)line, msg);
	__builtin_unreachable();
}

extern u64 pvlock_kernel_warnings;

static inline void pvlock_warn(const char *file, int line, const char *msg)
{
	pvlock_kernel_warnings++;
	pvlock_svc.warn(file, (u32)line, msg);
}

#endif /* PVLOCK_MODULE_H */
