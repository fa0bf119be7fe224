/* For a case about the I/O priority; include after case.h. The case's setup() calls
 * ioprio_setup() with the class and level it sets (ioprio_set, IOPRIO_WHO_PROCESS); check()
 * compares ioprio_get with what setup read back. */
#include <sys/syscall.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_BE 2
#define IOPRIO_CLASS_IDLE 3
#define IOPRIO_VALUE(class, level) (((class) << 13) | (level))

static long saved;

static void ioprio_setup(int class, int level)
{
    if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(class, level)) != 0)
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
