/* expect: refused: child processes */
/* A child that exited and was not waited for (a zombie): its exit status is state too. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <sys/wait.h>

static pid_t child;

static void setup(void) {
    child = fork();
    if (child < 0) fail("fork");
    if (child == 0) _exit(7);
    /* Wait until it is a zombie, without reaping it. */
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, child, &si, WEXITED | WNOWAIT) < 0) fail("waitid");
}

static int check(char *why, size_t n) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, child, &si, WEXITED | WNOWAIT | WNOHANG) < 0 || si.si_pid != child)
        return differ(why, n, "zombie child %d is gone", child);
    if (si.si_code != CLD_EXITED || si.si_status != 7)
        return differ(why, n, "child exit status %d, expected 7", si.si_status);
    return 0;
}
