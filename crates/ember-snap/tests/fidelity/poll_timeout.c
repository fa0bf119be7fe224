/* expect: exact */
/* dump-in: 7 */
/* A poll with a timeout the dump interrupts: after each check the case polls no descriptors
 * for 300 ms (the classic sleep); the next check says whether poll returned EINTR, reported
 * an event, or timed out early. */
#define _GNU_SOURCE
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
#include <poll.h>
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
    struct pollfd p = {.fd = -1};
    double t0 = now_ms();
    int r = poll(&p, 0, 300);
    double ms = now_ms() - t0;
    if (r < 0)
        snprintf(result, sizeof result, "poll returned -1 (%s) after %.1f ms", strerror(errno),
                 ms);
    else if (r > 0)
        snprintf(result, sizeof result, "poll returned %d with no descriptors", r);
    else if (ms < 300)
        snprintf(result, sizeof result, "poll timed out after %.1f ms, asked 300", ms);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
