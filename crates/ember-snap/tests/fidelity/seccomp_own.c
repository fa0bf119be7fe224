/* expect: exact */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The fidelity protocol: "ready", then answer "check" lines until "exit" or EOF. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = c;
    }
    buf[n] = 0;
    return (int)n;
}

static void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(1);
        s += w;
        n -= (size_t)w;
    }
}

static int serve(int (*check)(char *diff, size_t cap))
{
    char line[64], diff[1024];
    say("ready\n");
    while (read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "exit") == 0)
            return 0;
        if (strcmp(line, "check") != 0)
            continue;
        diff[0] = 0;
        if (check(diff, sizeof diff)) {
            char out[1100];
            snprintf(out, sizeof out, "diff: %s\n", diff);
            say(out);
        } else {
            say("ok\n");
        }
    }
    return 0;
}

/* The process's own seccomp filters: two stacked, each answering one syscall with its own
   errno; everything else allowed. */
static int install(int nr, int err)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {sizeof f / sizeof f[0], f};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p);
}

static long status_field(const char *name)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strstr(buf, name);
    return p ? strtol(p + strlen(name), 0, 10) : -1;
}

static int check(char *diff, size_t cap)
{
    errno = 0;
    long a = syscall(SYS_getpgid, 0);
    int ea = errno;
    errno = 0;
    long b = syscall(SYS_getsid, 0);
    int eb = errno;
    if (a != -1 || ea != 77 || b != -1 || eb != 78) {
        snprintf(diff, cap, "getpgid/getsid: expected -1 (errno 77)/-1 (errno 78), got %ld (%d)/%ld (%d)",
                 a, ea, b, eb);
        return 1;
    }
    long mode = status_field("\nSeccomp:"), n = status_field("\nSeccomp_filters:");
    if (mode != 2 || n != 2) {
        snprintf(diff, cap, "Seccomp/Seccomp_filters: expected 2/2, got %ld/%ld", mode, n);
        return 1;
    }
    if (getppid() < 0) {
        snprintf(diff, cap, "getppid failed: %s", strerror(errno));
        return 1;
    }
    return 0;
}

int main(void)
{
    if (install(SYS_getpgid, 77) || install(SYS_getsid, 78)) {
        fprintf(stderr, "seccomp: %s\n", strerror(errno));
        return 1;
    }
    return serve(check);
}
