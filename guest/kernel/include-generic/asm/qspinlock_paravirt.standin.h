/* SPDX-License-Identifier: GPL-2.0 */
/* pvlock's "generic" flavour: no arch unlock, so qspinlock_paravirt.h's own
 * C __pv_queued_spin_unlock() is built. */
