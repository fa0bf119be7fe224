/* expect: exact */
/* A real-time policy (SCHED_RR, priority 1) with nice -5 underneath (sched_getattr does not
 * show it for a real-time task; the task keeps it), kept after the process dropped its
 * privileges (every id 1000, no capability left): setting them needs CAP_SYS_NICE, so the
 * restore sets them before the image's credentials. */
#define _GNU_SOURCE
#include "case.h"
#include <sched.h>
#include <sys/resource.h>

static int check(char *why, size_t n) {
    int policy = sched_getscheduler(0);
    struct sched_param p = {0};
    sched_getparam(0, &p);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (policy != SCHED_RR || p.sched_priority != 1 || nice != -5 || geteuid() != 1000)
        return differ(why, n, "policy/priority/nice/euid: expected %d/1/-5/1000, got %d/%d/%d/%d",
                      SCHED_RR, policy, p.sched_priority, nice, geteuid());
    return 0;
}

static void setup(void) {
    if (setpriority(PRIO_PROCESS, 0, -5)) fail("setpriority");
    struct sched_param p = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_RR, &p)) fail("sched_setscheduler");
    if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) fail("setresuid");
}
