/* expect: exact */
/* A recursive mutex locked twice before the dump: glibc stores the owner's thread id and
   the count in it. After a restore the owner locks it a third time, unlocks it three
   times, a fourth unlock says EPERM, and it is locked twice again; another thread's
   trylock says EBUSY meanwhile. */
#define _GNU_SOURCE
#include "case.h"
#include "mutex.h"

static void setup(void) { init_locked(PTHREAD_MUTEX_RECURSIVE, PTHREAD_MUTEX_STALLED, 2); }

static int check(char *why, size_t n)
{
    if (expect(why, n, pthread_mutex_lock(&m), 0, "third lock by the owner") ||
        busy_for_others(why, n))
        return 1;
    char what[64];
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "unlock %d of 3 by the owner", i + 1);
        if (expect(why, n, pthread_mutex_unlock(&m), 0, what)) return 1;
    }
    if (expect(why, n, pthread_mutex_unlock(&m), EPERM, "a fourth unlock")) return 1;
    for (int i = 0; i < 2; i++) {
        snprintf(what, sizeof what, "relock %d of 2", i + 1);
        if (expect(why, n, pthread_mutex_lock(&m), 0, what)) return 1;
    }
    return 0;
}
