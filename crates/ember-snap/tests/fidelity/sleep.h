/* For a case whose dump interrupts a 300 ms sleep; include (instead of case.h, which it
 * includes with AFTER_CHECK set) after #define _GNU_SOURCE. The case defines
 *     static int nap(char *what, size_t n);  -- sleeps 300 ms once in its own way; 0 when the
 *                                               call ended as a full sleep ends, otherwise
 *                                               nonzero with `what` saying how it ended
 * and SLEEP_NAME (what a too-short sleep is called: "nanosleep"). After each answer to
 * check the case naps, timed on CLOCK_MONOTONIC; the next check says whether the nap
 * ended wrongly or woke before 300 ms had passed. */
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
#include <time.h>

static char result[300];

static int nap(char *what, size_t n);

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void after_check(void)
{
    char what[200] = "";
    double t0 = now_ms();
    int bad = nap(what, sizeof what);
    double ms = now_ms() - t0;
    if (bad)
        snprintf(result, sizeof result, "%s after %.1f ms", what, ms);
    else if (ms < 300)
        snprintf(result, sizeof result, "%s woke after %.1f ms, asked 300", SLEEP_NAME, ms);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
