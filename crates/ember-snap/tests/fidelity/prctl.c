/* expect: exact */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The fidelity protocol: "ready", then answer "check" lines until "exit" or EOF. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = c;
    }
    buf[n] = 0;
    return (int)n;
}

static void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(1);
        s += w;
        n -= (size_t)w;
    }
}

static int serve(int (*check)(char *diff, size_t cap))
{
    char line[64], diff[1024];
    say("ready\n");
    while (read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "exit") == 0)
            return 0;
        if (strcmp(line, "check") != 0)
            continue;
        diff[0] = 0;
        if (check(diff, sizeof diff)) {
            char out[1100];
            snprintf(out, sizeof out, "diff: %s\n", diff);
            say(out);
        } else {
            say("ok\n");
        }
    }
    return 0;
}

/* prctl state: no_new_privs, not dumpable, a death signal (SIGWINCH: harmless if the
   restorer's thread ends), timer slack, child subreaper, THP disabled, keepcaps. */
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

int main(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) ||
        prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0) ||
        prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) ||
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) ||
        prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) {
        fprintf(stderr, "prctl: %s\n", strerror(errno));
        return 1;
    }
    return serve(check);
}
