/* expect: exact */
/* dump-in: 35 */
/* A sleep the dump interrupts: after answering each check the case sleeps 300 ms in
 * nanosleep (the raw syscall, which has a restart block), so the runner dumps it there; the
 * next check says whether that sleep returned EINTR or woke before 300 ms had passed. */
#define _GNU_SOURCE
#define SLEEP_NAME "nanosleep"
#include "sleep.h"
#include <sys/syscall.h>

static int nap(char *what, size_t n)
{
    struct timespec req = {0, 300 * 1000000L}, rem = {0, 0};
    long r = syscall(SYS_nanosleep, &req, &rem);
    if (r != 0)
        return differ(what, n, "nanosleep returned %ld (%s)", r, strerror(errno));
    return 0;
}
