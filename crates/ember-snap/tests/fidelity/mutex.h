/* For a case about a pthread mutex `m` the main thread holds; include after case.h. */
#include <pthread.h>

static pthread_mutex_t m;

/* Initialises `m` of `type` (PTHREAD_MUTEX_ERRORCHECK...) and robustness
 * (PTHREAD_MUTEX_STALLED or _ROBUST) and locks it `times` times (exits 2 if it cannot). */
static void init_locked(int type, int robust, int times)
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) || pthread_mutexattr_settype(&a, type) ||
        pthread_mutexattr_setrobust(&a, robust))
        fail("pthread_mutexattr");
    if (pthread_mutex_init(&m, &a) != 0) fail("pthread_mutex_init");
    for (int i = 0; i < times; i++)
        if (pthread_mutex_lock(&m) != 0) fail("pthread_mutex_lock");
}

/* 0 when a pthread call returned `want`; otherwise 1 with `why` naming `what` and both. */
static int expect(char *why, size_t n, int got, int want, const char *what)
{
    if (got == want) return 0;
    return differ(why, n, "%s expected %s, got %s", what, want ? strerrorname_np(want) : "success",
                  strerror(got));
}

static void *other(void *arg)
{
    (void)arg;
    int r = pthread_mutex_trylock(&m);
    if (r == 0) pthread_mutex_unlock(&m);
    return (void *)(long)r;
}

/* 0 when another thread's trylock of `m` says EBUSY (it is held here). */
static int busy_for_others(char *why, size_t n)
{
    pthread_t th;
    void *res = 0;
    if (pthread_create(&th, 0, other, 0) != 0 || pthread_join(th, &res) != 0)
        return differ(why, n, "cannot start a thread");
    return expect(why, n, (int)(long)res, EBUSY, "another thread's trylock");
}
