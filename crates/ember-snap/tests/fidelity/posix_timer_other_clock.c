/* expect: refused: another process's or thread's CPU time */
/* A POSIX timer on another process's CPU clock (its parent's): the clock names that
   process by pid, which a restored copy cannot name again. Refused at dump. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <time.h>

static timer_t id;

static void setup(void)
{
    clockid_t parent;
    if (clock_getcpuclockid(getppid(), &parent) != 0)
        fail("clock_getcpuclockid");
    struct sigevent e = {.sigev_notify = SIGEV_NONE};
    if (timer_create(parent, &e, &id) != 0)
        fail("timer_create");
    struct itimerspec v = {{0, 0}, {1000, 0}};
    if (timer_settime(id, 0, &v, 0) != 0)
        fail("timer_settime");
}

static int check(char *why, size_t n)
{
    struct itimerspec v;
    if (timer_gettime(id, &v) != 0)
        return differ(why, n, "timer_gettime: %s", strerror(errno));
    return 0;
}
