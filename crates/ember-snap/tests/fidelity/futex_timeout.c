/* expect: exact */
/* dump-in: 202 */
/* A futex wait with a timeout the dump interrupts: after each check the case waits 300 ms on
 * a word nobody wakes (FUTEX_WAIT, relative timeout); the next check says whether the wait
 * returned anything but ETIMEDOUT, or timed out early. */
#define _GNU_SOURCE
#define SLEEP_NAME "futex wait (timed out)"
#include "sleep.h"
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>

static uint32_t word;

static int nap(char *what, size_t n)
{
    struct timespec rel = {0, 300 * 1000000L};
    long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &rel, NULL, 0);
    if (r != -1 || errno != ETIMEDOUT)
        return differ(what, n, "futex wait returned %ld (%s), not ETIMEDOUT", r,
                      r == -1 ? strerror(errno) : "no error");
    return 0;
}
