/* expect: exact */
/* The process's own seccomp filters: three stacked, each answering one syscall with its own
   errno, everything else allowed. The first and the last answer the same syscall: of two
   equal actions the kernel takes the newest filter's, so the chain's order shows. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>

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
    if (a != -1 || ea != 79 || b != -1 || eb != 78) {
        snprintf(diff, cap, "getpgid/getsid: expected -1 (errno 79)/-1 (errno 78), got %ld (%d)/%ld (%d)",
                 a, ea, b, eb);
        return 1;
    }
    long mode = status_field("\nSeccomp:"), n = status_field("\nSeccomp_filters:");
    if (mode != 2 || n != 3) {
        snprintf(diff, cap, "Seccomp/Seccomp_filters: expected 2/3, got %ld/%ld", mode, n);
        return 1;
    }
    if (getppid() < 0) {
        snprintf(diff, cap, "getppid failed: %s", strerror(errno));
        return 1;
    }
    return 0;
}

static void setup(void)
{
    if (install(SYS_getpgid, 77) || install(SYS_getsid, 78) || install(SYS_getpgid, 79)) {
        fail("seccomp");
    }
}
