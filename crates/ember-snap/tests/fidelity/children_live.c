/* expect: refused: child processes */
/* A live child process: an image holds one process. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static pid_t child;

static void setup(void) {
    child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        /* Holds none of the protocol's pipes, and ends with its parent. */
        close(0);
        close(1);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;) pause();
    }
}

static int check(char *why, size_t n) {
    if (kill(child, 0) < 0) return differ(why, n, "child %d is gone", child);
    if (waitpid(child, NULL, WNOHANG) != 0) return differ(why, n, "child %d ended", child);
    return 0;
}
