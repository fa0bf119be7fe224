/* expect: exact */
/* An error-checking mutex locked before the dump: glibc stores the owner's thread id in it.
   After a restore the owner can unlock it, lock it again, and a second lock says EDEADLK
   (it is ours); another thread's trylock says EBUSY. */
#define _GNU_SOURCE
#include "case.h"
#include "mutex.h"

static void setup(void) { init_locked(PTHREAD_MUTEX_ERRORCHECK, PTHREAD_MUTEX_STALLED, 1); }

static int check(char *why, size_t n)
{
    return expect(why, n, pthread_mutex_lock(&m), EDEADLK, "second lock by the owner") ||
           busy_for_others(why, n) ||
           expect(why, n, pthread_mutex_unlock(&m), 0, "unlock by the owner") ||
           expect(why, n, pthread_mutex_unlock(&m), EPERM, "unlock of an unlocked mutex") ||
           expect(why, n, pthread_mutex_lock(&m), 0, "relock");
}
