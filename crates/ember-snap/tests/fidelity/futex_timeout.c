/* expect: exact */
/* dump-in: 202 */
/* A futex wait with a timeout the dump interrupts: after each check the case waits 300 ms on
 * a word nobody wakes (FUTEX_WAIT, relative timeout); the next check says whether the wait
 * returned anything but ETIMEDOUT, or timed out early. */
#define _GNU_SOURCE
static void after_check(void);
#define AFTER_CHECK after_check
#include "case.h"
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>

static char result[300];
static uint32_t word;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void after_check(void)
{
    struct timespec rel = {0, 300 * 1000000L};
    double t0 = now_ms();
    long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &rel, NULL, 0);
    double ms = now_ms() - t0;
    if (r != -1 || errno != ETIMEDOUT)
        snprintf(result, sizeof result, "futex wait returned %ld (%s) after %.1f ms, not ETIMEDOUT",
                 r, r == -1 ? strerror(errno) : "no error", ms);
    else if (ms < 300)
        snprintf(result, sizeof result, "futex wait timed out after %.1f ms, asked 300", ms);
}

static void setup(void) {}

static int check(char *why, size_t n)
{
    if (result[0])
        return differ(why, n, "%s", result);
    return 0;
}
