/* SPDX-License-Identifier: GPL-2.0 */
/* pvlock stand-in for <trace/events/lock.h>: no tracing in the guest (the
 * contention tracepoints are empty functions in pvlock/kernel.h). */
#include <pvlock/kernel.h>
