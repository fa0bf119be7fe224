/* expect: refused: seccomp strict mode */
/* Self-contained (not case.h): in strict mode only exit, not exit_group, ends it with 0. */
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

/* Seccomp strict mode: only read, write, exit and sigreturn are left, and a restorer cannot
   put a process into it: refused at dump, the process left running. */
static int check(char *diff, size_t cap)
{
    (void)diff;
    (void)cap;
    return 0; /* still alive in strict mode: any other syscall would have killed it */
}

int main(void)
{
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0) {
        fprintf(stderr, "strict mode: %s\n", strerror(errno));
        return 1;
    }
    serve(check);
    syscall(SYS_exit, 0); /* exit_group is not allowed in strict mode */
    return 0;
}
