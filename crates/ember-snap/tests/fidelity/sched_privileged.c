/* expect: exact */
/* What only a privileged process may set, kept after it dropped its privileges: nice -5 and
 * the real-time I/O class (level 3), then every id 1000 and no capability left (sched_rt.c:
 * a real-time policy). The restore sets them while the target is still root, before the image's
 * credentials (after them the kernel refuses each with EPERM). */
#define _GNU_SOURCE
#include "case.h"
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_RT 1
#define IOPRIO_VALUE(class, level) (((class) << 13) | (level))

static int check(char *why, size_t n) {
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    long io = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
    if (nice != -5 || io != IOPRIO_VALUE(IOPRIO_CLASS_RT, 3) || geteuid() != 1000) {
        return differ(why, n, "nice/ioprio/euid: expected -5/%#x/1000, got %d/%#lx/%d",
                      IOPRIO_VALUE(IOPRIO_CLASS_RT, 3), nice, io, geteuid());
    }
    return 0;
}

static void setup(void) {
    if (setpriority(PRIO_PROCESS, 0, -5)) fail("setpriority");
    if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(IOPRIO_CLASS_RT, 3)))
        fail("ioprio_set");
    if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) fail("setresuid");
}
