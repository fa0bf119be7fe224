/* expect: exact */
/* The process keeps its pid and thread id: getpid() and gettid() after a restore equal
   the values it saved before the dump. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

int main(void) {
    pid_t pid = getpid();
    pid_t tid = (pid_t)syscall(SYS_gettid);
    say("ready\n");
    char cmd[64], out[160];
    while (line(cmd, sizeof cmd) == 0) {
        if (strcmp(cmd, "check") == 0) {
            pid_t p = getpid(), t = (pid_t)syscall(SYS_gettid), g = gettid();
            if (p != pid || t != tid || g != tid)
                snprintf(out, sizeof out,
                         "diff: getpid/gettid/glibc gettid expected %d/%d/%d, got %d/%d/%d\n",
                         pid, tid, tid, p, t, g);
            else
                snprintf(out, sizeof out, "ok\n");
            say(out);
        } else if (strcmp(cmd, "exit") == 0) {
            return 0;
        }
    }
    return 0;
}
