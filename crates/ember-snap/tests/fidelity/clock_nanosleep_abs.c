/* expect: exact */
/* dump-in: 230 */
/* An absolute sleep the dump interrupts: after each check the case sleeps until 300 ms from
 * then on CLOCK_MONOTONIC (TIMER_ABSTIME); the next check says whether it returned an error
 * or woke before its deadline. */
#define _GNU_SOURCE
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
#include <time.h>

static char result[300];

static void after_check(void)
{
    struct timespec t, now;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += 300 * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    int r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
    clock_gettime(CLOCK_MONOTONIC, &now);
    long early_us = (t.tv_sec - now.tv_sec) * 1000000L + (t.tv_nsec - now.tv_nsec) / 1000;
    if (r != 0)
        snprintf(result, sizeof result, "clock_nanosleep(TIMER_ABSTIME) returned %s",
                 strerror(r));
    else if (early_us > 0)
        snprintf(result, sizeof result, "clock_nanosleep(TIMER_ABSTIME) woke %ld us early",
                 early_us);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
