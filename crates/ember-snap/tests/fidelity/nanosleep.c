/* expect: exact */
/* dump-in: 35 */
/* A sleep the dump interrupts: after answering each check the case sleeps 300 ms in
 * nanosleep (the raw syscall, which has a restart block), so the runner dumps it there; the
 * next check says whether that sleep returned EINTR or woke before 300 ms had passed. */
#define _GNU_SOURCE
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
#include <sys/syscall.h>
#include <time.h>

static char result[300];

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void after_check(void)
{
    struct timespec req = {0, 300 * 1000000L}, rem = {0, 0};
    double t0 = now_ms();
    long r = syscall(SYS_nanosleep, &req, &rem);
    double ms = now_ms() - t0;
    if (r != 0)
        snprintf(result, sizeof result, "nanosleep returned %ld (%s) after %.1f ms", r,
                 strerror(errno), ms);
    else if (ms < 300)
        snprintf(result, sizeof result, "nanosleep woke after %.1f ms, asked 300", ms);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
