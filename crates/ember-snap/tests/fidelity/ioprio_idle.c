/* expect: exact */
/* I/O priority: the idle class (ioprio_set, IOPRIO_WHO_PROCESS). */
#define _GNU_SOURCE
#include "case.h"
#include <sys/syscall.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_IDLE 3
#define IOPRIO_VALUE(class, level) (((class) << 13) | (level))

static long saved;

static void setup(void)
{
    if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(IOPRIO_CLASS_IDLE, 0)) != 0)
        fail("ioprio_set");
    saved = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
}

static int check(char *why, size_t n)
{
    long now = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
    if (now != saved)
        return differ(why, n, "ioprio: expected %#lx, got %#lx", saved, now);
    return 0;
}
