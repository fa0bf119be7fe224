/* expect: exact */
/* A robust mutex locked before the dump: its futex word holds the owner's thread id, and
   the thread's robust list (registered with the kernel) links it. After a restore the
   word still names this thread, the robust list is the same, another thread's trylock
   says EBUSY, the owner unlocks it, a second unlock says EPERM, and it relocks. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t m;
static void *head0;
static size_t len0;

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
    pid_t tid = (pid_t)syscall(SYS_gettid);
    unsigned owner = (unsigned)m.__data.__lock & FUTEX_TID_MASK;
    if (owner != (unsigned)tid) {
        snprintf(out, cap, "diff: the futex word's owner expected %d (this thread), got %u\n", tid, owner);
        return;
    }
    void *head = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head != head0 || len != len0) {
        snprintf(out, cap, "diff: robust list expected %p/%zu, got %p/%zu\n", head0, len0, head, len);
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
    int r = pthread_mutex_unlock(&m);
    if (r != 0) {
        snprintf(out, cap, "diff: unlock by the owner expected success, got %s\n", strerror(r));
        return;
    }
    r = pthread_mutex_unlock(&m);
    if (r != EPERM) {
        snprintf(out, cap, "diff: unlock of an unlocked mutex expected EPERM, got %s\n", strerror(r));
        return;
    }
    r = pthread_mutex_lock(&m);
    if (r != 0) {
        snprintf(out, cap, "diff: relock expected success, got %s\n", strerror(r));
        return;
    }
    snprintf(out, cap, "ok\n");
}

int main(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&m, &a);
    if (pthread_mutex_lock(&m) != 0) return 1;
    if (syscall(SYS_get_robust_list, 0, &head0, &len0) != 0) return 1;
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
