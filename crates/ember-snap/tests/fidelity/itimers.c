/* expect: exact */
/* Interval timers: ITIMER_REAL (as alarm() arms it), ITIMER_VIRTUAL, ITIMER_PROF, each with
   a long time left and an interval. After restore the time left is at most what it was and
   not much less; the interval is exact. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/time.h>

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

static void setup(void)
{
    for (int i = 0; i < 3; i++) {
        struct itimerval v = {{want[i].interval, 0}, {want[i].value, 0}};
        if (setitimer(want[i].which, &v, 0) != 0) {
            fail("setitimer");
        }
    }
}
