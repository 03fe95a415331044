/* SPDX-License-Identifier: GPL-2.0 */
/* pvlock stand-in for <asm-generic/percpu.h> (6.15+ kernel/locking/qspinlock.h
 * includes it): the per-CPU interface is in pvlock/kernel.h. */
#include <pvlock/kernel.h>
