/* expect: exact */
/* POSIX timers with sparse ids (one deleted between others): a signal timer with a value,
   a SIGEV_NONE timer, a SIGEV_THREAD_ID timer aimed at the thread (disarmed), a CPU-time
   timer. After restore: the same ids answer, with the same settings and about the same
   time left; the thread timer names the restored thread. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <signal.h>
#include <time.h>

struct t { clockid_t clock; int notify, signo; long value, left, interval; timer_t id; };
static struct t ts[] = {
    {CLOCK_MONOTONIC, SIGEV_SIGNAL, 0 /* SIGRTMIN+3 */, 0x1234, 1000, 7, 0},
    {CLOCK_REALTIME, SIGEV_NONE, SIGALRM, 0, 500, 0, 0},
    {CLOCK_BOOTTIME, SIGEV_THREAD_ID, 0 /* SIGRTMIN+4 */, 0x55, 0, 0, 0},
    {CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGPROF, 9, 300, 0, 0},
};
#define N (int)(sizeof ts / sizeof ts[0])

static int check(char *diff, size_t cap)
{
    for (int i = 0; i < N; i++) {
        struct itimerspec v;
        if (timer_gettime(ts[i].id, &v) != 0) {
            snprintf(diff, cap, "timer %ld: timer_gettime: %s", (long)(intptr_t)ts[i].id, strerror(errno));
            return 1;
        }
        long left = v.it_value.tv_sec;
        int armed = v.it_value.tv_sec || v.it_value.tv_nsec;
        if (v.it_interval.tv_sec != ts[i].interval || v.it_interval.tv_nsec != 0 ||
            left > ts[i].left || (ts[i].left && (left < ts[i].left - 100 || !armed)) ||
            (!ts[i].left && armed)) {
            snprintf(diff, cap, "timer %ld: expected %lds left, interval %lds; got %ld.%09lds, interval %ld.%09lds",
                     (long)(intptr_t)ts[i].id, ts[i].left, ts[i].interval, left, v.it_value.tv_nsec,
                     (long)v.it_interval.tv_sec, v.it_interval.tv_nsec);
            return 1;
        }
    }
    /* What the kernel says of each: signal, value, notify kind and its target. */
    char buf[8192];
    int fd = open("/proc/self/timers", O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        snprintf(diff, cap, "reading /proc/self/timers: %s", strerror(errno));
        return 1;
    }
    buf[n] = 0;
    int found = 0;
    for (char *p = buf; p && *p; p = strstr(p, "\nID: ")) {
        if (*p == '\n')
            p++;
        long id = -1, sig = -1, clock = -1, target = -1;
        unsigned long long value = 0;
        char kind[16] = "", who[8] = "";
        if (sscanf(p, "ID: %ld\nsignal: %ld/%llx\nnotify: %15[a-z]/%7[a-z].%ld\nClockID: %ld", &id,
                   &sig, &value, kind, who, &target, &clock) != 7) {
            snprintf(diff, cap, "unreadable /proc/self/timers entry");
            return 1;
        }
        for (int i = 0; i < N; i++) {
            if ((long)(intptr_t)ts[i].id != id)
                continue;
            found++;
            int thread = ts[i].notify == SIGEV_THREAD_ID;
            const char *want_kind = ts[i].notify == SIGEV_NONE ? "none" : "signal";
            /* /proc names processes as the pid namespace it was mounted for sees them, which
               need not be this process's own (restored in a fresh namespace under the host's
               /proc): the target is this process, or its one thread, as /proc calls it. */
            char self[32];
            ssize_t k = readlink("/proc/self", self, sizeof self - 1);
            self[k > 0 ? k : 0] = 0;
            long want_target = atol(self);
            /* The kernel lists the process's own CPU clock as its encoded form. */
            long want_clock = ts[i].clock == CLOCK_PROCESS_CPUTIME_ID ? -6 : ts[i].clock;
            if (sig != ts[i].signo || value != (unsigned long long)ts[i].value ||
                strcmp(kind, want_kind) != 0 || strcmp(who, thread ? "tid" : "pid") != 0 ||
                target != want_target || clock != want_clock) {
                snprintf(diff, cap, "timer %ld: expected signal %d/%lx %s/%s.%ld clock %ld; got %ld/%llx %s/%s.%ld clock %ld",
                         id, ts[i].signo, ts[i].value, want_kind, thread ? "tid" : "pid", want_target,
                         want_clock, sig, value, kind, who, target, clock);
                return 1;
            }
        }
    }
    if (found != N) {
        snprintf(diff, cap, "expected %d timers, /proc/self/timers lists %d of them", N, found);
        return 1;
    }
    return 0;
}

static void setup(void)
{
    ts[0].signo = SIGRTMIN + 3;
    ts[2].signo = SIGRTMIN + 4;
    for (int i = 0; i < N; i++) {
        struct sigevent e;
        memset(&e, 0, sizeof e);
        e.sigev_notify = ts[i].notify;
        e.sigev_signo = ts[i].signo;
        e.sigev_value.sival_ptr = (void *)ts[i].value;
        if (ts[i].notify == SIGEV_THREAD_ID)
            e._sigev_un._tid = gettid();
        if (timer_create(ts[i].clock, &e, &ts[i].id) != 0) {
            fail("timer_create");
        }
        if (i == 1) { /* a gap in the ids */
            timer_t gap;
            timer_create(CLOCK_MONOTONIC, 0, &gap);
            timer_delete(gap);
        }
        struct itimerspec v = {{ts[i].interval, 0}, {ts[i].left, 0}};
        if (timer_settime(ts[i].id, 0, &v, 0) != 0) {
            fail("timer_settime");
        }
    }
}
