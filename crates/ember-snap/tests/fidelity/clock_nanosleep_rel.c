/* expect: exact */
/* dump-in: 230 */
/* As nanosleep.c, with glibc's nanosleep (clock_nanosleep on CLOCK_MONOTONIC, relative):
 * the sleep a dump interrupts must neither return EINTR nor end early. */
#define _GNU_SOURCE
#define SLEEP_NAME "clock_nanosleep"
#include "sleep.h"

static int nap(char *what, size_t n)
{
    struct timespec req = {0, 300 * 1000000L};
    int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
    if (r != 0)
        return differ(what, n, "clock_nanosleep returned %s", strerror(r));
    return 0;
}
