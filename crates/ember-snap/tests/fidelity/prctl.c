/* expect: exact */
/* prctl state: no_new_privs, not dumpable, a death signal (SIGUSR2, caught and counted, so
   one the restore delivers by mistake shows; the restored process's parent, the runner's
   restoring thread, lives through the checks), timer slack, child subreaper, THP disabled,
   keepcaps. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <sys/prctl.h>

static volatile sig_atomic_t arrived;

static void count(int sig)
{
    (void)sig;
    arrived++;
}

static int get(int op)
{
    return prctl(op, 0, 0, 0, 0);
}

static int get_ptr(int op)
{
    int v = -1;
    prctl(op, &v, 0, 0, 0);
    return v;
}

static int check(char *diff, size_t cap)
{
    struct { const char *name; long want, got; } v[] = {
        {"NO_NEW_PRIVS", 1, get(PR_GET_NO_NEW_PRIVS)},
        {"DUMPABLE", 0, get(PR_GET_DUMPABLE)},
        {"PDEATHSIG", SIGUSR2, get_ptr(PR_GET_PDEATHSIG)},
        {"SIGUSR2 delivered", 0, arrived},
        {"TIMERSLACK", 123456, get(PR_GET_TIMERSLACK)},
        {"CHILD_SUBREAPER", 1, get_ptr(PR_GET_CHILD_SUBREAPER)},
        {"THP_DISABLE", 1, get(PR_GET_THP_DISABLE)},
        {"KEEPCAPS", 1, get(PR_GET_KEEPCAPS)},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (v[i].want != v[i].got) {
            snprintf(diff, cap, "%s: expected %ld, got %ld", v[i].name, v[i].want, v[i].got);
            return 1;
        }
    }
    return 0;
}

static void setup(void)
{
    struct sigaction sa = {.sa_handler = count, .sa_flags = SA_RESTART};
    if (sigaction(SIGUSR2, &sa, NULL)) {
        fail("sigaction");
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) ||
        prctl(PR_SET_PDEATHSIG, SIGUSR2, 0, 0, 0) ||
        prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) ||
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) ||
        prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) {
        fail("prctl");
    }
}
