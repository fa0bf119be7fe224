/* expect: exact */
/* A real-time policy (SCHED_RR, priority 1) kept after the process dropped its privileges
 * (every id 1000, no capability left): setting it needs CAP_SYS_NICE, so the restore sets
 * it before the image's credentials. */
#define _GNU_SOURCE
#include "case.h"
#include <sched.h>

static int check(char *why, size_t n) {
    int policy = sched_getscheduler(0);
    struct sched_param p = {0};
    sched_getparam(0, &p);
    if (policy != SCHED_RR || p.sched_priority != 1 || geteuid() != 1000)
        return differ(why, n, "policy/priority/euid: expected %d/1/1000, got %d/%d/%d", SCHED_RR,
                      policy, p.sched_priority, geteuid());
    return 0;
}

static void setup(void) {
    struct sched_param p = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_RR, &p)) fail("sched_setscheduler");
    if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) fail("setresuid");
}
