/* SPDX-License-Identifier: GPL-2.0 */
/* pvlock stand-in for <asm/mcs_spinlock.h>: x86 uses asm-generic's. */
#include <asm-generic/mcs_spinlock.h>
