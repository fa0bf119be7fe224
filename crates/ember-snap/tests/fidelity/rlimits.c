/* expect: exact */
/* Resource limits, soft and hard, lowered from what the process inherited (raising a hard
   limit needs CAP_SYS_RESOURCE, which the restorer may lack: the restore then fails). */
#define _GNU_SOURCE
#include "case.h"
#include <sys/resource.h>

static const struct { int res; rlim_t cur, max; } want[] = {
    {RLIMIT_CORE, 4096, 8192},
    {RLIMIT_FSIZE, 1 << 30, 1UL << 31},
    {RLIMIT_NOFILE, 200, 300},
    {RLIMIT_NPROC, 500, 600},
    {RLIMIT_MEMLOCK, 65536, 131072},
    {RLIMIT_MSGQUEUE, 100000, 200000},
    {RLIMIT_SIGPENDING, 1000, 2000},
    {RLIMIT_CPU, 100000, 200000},
    {RLIMIT_RTTIME, 1000000, 2000000},
    {RLIMIT_STACK, 4 << 20, 64 << 20},
};
static struct rlimit saved[RLIM_NLIMITS];

static int check(char *diff, size_t cap)
{
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit now;
        if (getrlimit(r, &now) != 0) {
            snprintf(diff, cap, "getrlimit(%d): %s", r, strerror(errno));
            return 1;
        }
        if (now.rlim_cur != saved[r].rlim_cur || now.rlim_max != saved[r].rlim_max) {
            snprintf(diff, cap, "resource %d: expected %llu/%llu, got %llu/%llu", r,
                     (unsigned long long)saved[r].rlim_cur, (unsigned long long)saved[r].rlim_max,
                     (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max);
            return 1;
        }
    }
    return 0;
}

static void setup(void)
{
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct rlimit l = {want[i].cur, want[i].max};
        if (setrlimit(want[i].res, &l) != 0) {
            fail("setrlimit");
        }
    }
    for (int r = 0; r < RLIM_NLIMITS; r++)
        getrlimit(r, &saved[r]);
}
