/* expect: exact */
/* A recursive mutex locked twice before the dump: glibc stores the owner's thread id and
   the count in it. After a restore the owner locks it a third time, unlocks it three
   times, a fourth unlock says EPERM, and it is locked twice again; another thread's
   trylock says EBUSY meanwhile. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t m;

static int line(char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        if (c == '\n') break;
        if (n + 1 < cap) buf[n++] = c;
    }
    buf[n] = 0;
    return 0;
}

static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void *other(void *arg) {
    (void)arg;
    int r = pthread_mutex_trylock(&m);
    if (r == 0) pthread_mutex_unlock(&m);
    return (void *)(long)r;
}

static void check(char *out, size_t cap) {
    int r = pthread_mutex_lock(&m);
    if (r != 0) {
        snprintf(out, cap, "diff: third lock by the owner expected success, got %s\n", strerror(r));
        return;
    }
    pthread_t th;
    void *res = 0;
    if (pthread_create(&th, 0, other, 0) != 0 || pthread_join(th, &res) != 0) {
        snprintf(out, cap, "diff: cannot start a thread\n");
        return;
    }
    if ((long)res != EBUSY) {
        snprintf(out, cap, "diff: another thread's trylock expected EBUSY, got %s\n",
                 strerror((int)(long)res));
        return;
    }
    for (int i = 0; i < 3; i++) {
        r = pthread_mutex_unlock(&m);
        if (r != 0) {
            snprintf(out, cap, "diff: unlock %d of 3 by the owner expected success, got %s\n",
                     i + 1, strerror(r));
            return;
        }
    }
    r = pthread_mutex_unlock(&m);
    if (r != EPERM) {
        snprintf(out, cap, "diff: a fourth unlock expected EPERM, got %s\n", strerror(r));
        return;
    }
    for (int i = 0; i < 2; i++) {
        r = pthread_mutex_lock(&m);
        if (r != 0) {
            snprintf(out, cap, "diff: relock %d of 2 expected success, got %s\n", i + 1, strerror(r));
            return;
        }
    }
    snprintf(out, cap, "ok\n");
}

int main(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&m, &a);
    if (pthread_mutex_lock(&m) != 0 || pthread_mutex_lock(&m) != 0) return 1;
    say("ready\n");
    char cmd[64], out[200];
    while (line(cmd, sizeof cmd) == 0) {
        if (strcmp(cmd, "check") == 0) {
            check(out, sizeof out);
            say(out);
        } else if (strcmp(cmd, "exit") == 0) {
            return 0;
        }
    }
    return 0;
}
