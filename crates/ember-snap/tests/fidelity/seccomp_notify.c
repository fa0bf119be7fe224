/* expect: refused: seccomp user notification (SECCOMP_RET_USER_NOTIF) */
/* A filter installed with SECCOMP_FILTER_FLAG_NEW_LISTENER that hands getppid to a
 * supervisor (its listener closed here: a held one is refused as a descriptor first). A
 * restore cannot give the filter its listener back: reinstalled without one, its syscalls
 * would fail with ENOSYS. */
#define _GNU_SOURCE
#include "case.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static void setup(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof *code, code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) fail("PR_SET_NO_NEW_PRIVS");
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0) fail("seccomp");
    close((int)fd);
}

static int check(char *why, size_t n) {
    /* With no listener the kernel answers ENOSYS. */
    if (syscall(SYS_getppid) != -1 || errno != ENOSYS)
        return differ(why, n, "getppid: expected ENOSYS, got %s", strerror(errno));
    return 0;
}
