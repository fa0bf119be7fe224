/* expect: exact */
/* Scheduling: SCHED_BATCH with reset-on-fork, nice 7, pinned to CPU 0 (of more than one). */
#define _GNU_SOURCE
#include "case.h"
#include <sched.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct attr {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};
static struct attr saved;
static cpu_set_t saved_cpus;

static int get(struct attr *a)
{
    memset(a, 0, sizeof *a);
    return (int)syscall(SYS_sched_getattr, 0, a, sizeof *a, 0);
}

static int check(char *diff, size_t cap)
{
    struct attr now;
    cpu_set_t cpus;
    if (get(&now) != 0 || sched_getaffinity(0, sizeof cpus, &cpus) != 0) {
        snprintf(diff, cap, "reading: %s", strerror(errno));
        return 1;
    }
    if (now.policy != saved.policy || now.flags != saved.flags || now.nice != saved.nice ||
        now.priority != saved.priority) {
        snprintf(diff, cap, "policy/flags/nice/priority: expected %u/%llu/%d/%u, got %u/%llu/%d/%u",
                 saved.policy, (unsigned long long)saved.flags, saved.nice, saved.priority,
                 now.policy, (unsigned long long)now.flags, now.nice, now.priority);
        return 1;
    }
    if (!CPU_EQUAL(&cpus, &saved_cpus)) {
        snprintf(diff, cap, "affinity: expected %d CPUs (CPU 0: %d), got %d (CPU 0: %d)",
                 CPU_COUNT(&saved_cpus), CPU_ISSET(0, &saved_cpus), CPU_COUNT(&cpus),
                 CPU_ISSET(0, &cpus));
        return 1;
    }
    if (getpriority(PRIO_PROCESS, 0) != 7) {
        snprintf(diff, cap, "nice: expected 7, got %d", getpriority(PRIO_PROCESS, 0));
        return 1;
    }
    return 0;
}

static void setup(void)
{
    struct attr a = {.size = sizeof a, .policy = SCHED_BATCH, .flags = 1 /* RESET_ON_FORK */,
                     .nice = 7};
    if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) {
        fail("sched_setattr");
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
        fail("sched_setaffinity");
    }
    get(&saved);
    sched_getaffinity(0, sizeof saved_cpus, &saved_cpus);
}
