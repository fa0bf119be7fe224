/* expect: exact */
/* dump-in: 230 */
/* As nanosleep.c, with glibc's nanosleep (clock_nanosleep on CLOCK_MONOTONIC, relative):
 * the sleep a dump interrupts must neither return EINTR nor end early. */
#define _GNU_SOURCE
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
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
    struct timespec req = {0, 300 * 1000000L};
    double t0 = now_ms();
    int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
    double ms = now_ms() - t0;
    if (r != 0)
        snprintf(result, sizeof result, "clock_nanosleep returned %s after %.1f ms",
                 strerror(r), ms);
    else if (ms < 300)
        snprintf(result, sizeof result, "clock_nanosleep woke after %.1f ms, asked 300", ms);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
