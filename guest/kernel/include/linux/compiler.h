/* SPDX-License-Identifier: GPL-2.0 */
/* pvlock stand-in for <linux/compiler.h>: everything is in pvlock/kernel.h. */
#include <pvlock/kernel.h>
