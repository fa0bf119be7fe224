/* expect: exact */
/* dump-in: 7 */
/* A poll with a timeout the dump interrupts: after each check the case polls no descriptors
 * for 300 ms (the classic sleep); the next check says whether poll returned EINTR, reported
 * an event, or timed out early. */
#define _GNU_SOURCE
#define SLEEP_NAME "poll (timed out)"
#include "sleep.h"
#include <poll.h>

static int nap(char *what, size_t n)
{
    struct pollfd p = {.fd = -1};
    int r = poll(&p, 0, 300);
    if (r < 0)
        return differ(what, n, "poll returned -1 (%s)", strerror(errno));
    if (r > 0)
        return differ(what, n, "poll returned %d with no descriptors", r);
    return 0;
}
