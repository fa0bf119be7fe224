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

/* Resource limits, soft and hard, lowered from what the process inherited (raising a hard
   limit needs CAP_SYS_RESOURCE, which the restorer may lack: the restore then fails). */
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

int main(void)
{
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct rlimit l = {want[i].cur, want[i].max};
        if (setrlimit(want[i].res, &l) != 0) {
            fprintf(stderr, "setrlimit(%d): %s\n", want[i].res, strerror(errno));
            return 1;
        }
    }
    for (int r = 0; r < RLIM_NLIMITS; r++)
        getrlimit(r, &saved[r]);
    return serve(check);
}
