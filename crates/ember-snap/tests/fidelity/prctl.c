/* expect: exact */
/* prctl state: no_new_privs, not dumpable, a death signal (SIGWINCH: harmless if the
   restorer's thread ends), timer slack, child subreaper, THP disabled, keepcaps. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <sys/prctl.h>

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
        {"PDEATHSIG", SIGWINCH, get_ptr(PR_GET_PDEATHSIG)},
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
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) ||
        prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0) ||
        prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) ||
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) ||
        prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) {
        fail("prctl");
    }
}
