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

/* Interval timers: ITIMER_REAL (as alarm() arms it), ITIMER_VIRTUAL, ITIMER_PROF, each with
   a long time left and an interval. After restore the time left is at most what it was and
   not much less; the interval is exact. */
static const struct { int which; long value, interval; } want[] = {
    {ITIMER_REAL, 1000, 0},
    {ITIMER_VIRTUAL, 500, 50},
    {ITIMER_PROF, 600, 60},
};

static int check(char *diff, size_t cap)
{
    for (int i = 0; i < 3; i++) {
        struct itimerval v;
        getitimer(want[i].which, &v);
        long left = v.it_value.tv_sec;
        if (v.it_interval.tv_sec != want[i].interval || v.it_interval.tv_usec != 0 ||
            left > want[i].value || left < want[i].value - 100 ||
            (left == 0 && v.it_value.tv_usec == 0)) {
            snprintf(diff, cap, "timer %d: expected %lds left (minus at most 100), interval %lds; got %ld.%06lds, interval %ld.%06lds",
                     want[i].which, want[i].value, want[i].interval, left, (long)v.it_value.tv_usec,
                     (long)v.it_interval.tv_sec, (long)v.it_interval.tv_usec);
            return 1;
        }
    }
    return 0;
}

int main(void)
{
    for (int i = 0; i < 3; i++) {
        struct itimerval v = {{want[i].interval, 0}, {want[i].value, 0}};
        if (setitimer(want[i].which, &v, 0) != 0) {
            fprintf(stderr, "setitimer: %s\n", strerror(errno));
            return 1;
        }
    }
    return serve(check);
}
