/* expect: exact */
/* The process keeps its pid and thread id: getpid() and gettid() after a restore equal
   the values it saved before the dump. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/syscall.h>

static pid_t pid, tid;

static void setup(void)
{
    pid = getpid();
    tid = (pid_t)syscall(SYS_gettid);
}

static int check(char *why, size_t n)
{
    pid_t p = getpid(), t = (pid_t)syscall(SYS_gettid), g = gettid();
    if (p != pid || t != tid || g != tid)
        return differ(why, n, "getpid/gettid/glibc gettid expected %d/%d/%d, got %d/%d/%d", pid,
                      tid, tid, p, t, g);
    return 0;
}
