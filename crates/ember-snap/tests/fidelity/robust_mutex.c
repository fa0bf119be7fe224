/* expect: exact */
/* A robust mutex locked before the dump: its futex word holds the owner's thread id, and
   the thread's robust list (registered with the kernel) links it. After a restore the
   word still names this thread, the robust list is the same, another thread's trylock
   says EBUSY, the owner unlocks it, a second unlock says EPERM, and it relocks. */
#define _GNU_SOURCE
#include "case.h"
#include "mutex.h"
#include <linux/futex.h>
#include <sys/syscall.h>

static void *head0;
static size_t len0;

static void setup(void)
{
    init_locked(PTHREAD_MUTEX_DEFAULT, PTHREAD_MUTEX_ROBUST, 1);
    if (syscall(SYS_get_robust_list, 0, &head0, &len0) != 0) fail("get_robust_list");
}

static int check(char *why, size_t n)
{
    pid_t tid = gettid();
    unsigned owner = (unsigned)m.__data.__lock & FUTEX_TID_MASK;
    if (owner != (unsigned)tid)
        return differ(why, n, "the futex word's owner expected %d (this thread), got %u", tid,
                      owner);
    void *head = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head != head0 || len != len0)
        return differ(why, n, "robust list expected %p/%zu, got %p/%zu", head0, len0, head, len);
    return busy_for_others(why, n) ||
           expect(why, n, pthread_mutex_unlock(&m), 0, "unlock by the owner") ||
           expect(why, n, pthread_mutex_unlock(&m), EPERM, "unlock of an unlocked mutex") ||
           expect(why, n, pthread_mutex_lock(&m), 0, "relock");
}
