/* expect: refused: installed with SECCOMP_FILTER_FLAG_LOG */
/* A filter installed with SECCOMP_FILTER_FLAG_LOG (read at dump with
 * PTRACE_SECCOMP_GET_METADATA): the image keeps no filter flags yet, so it is refused
 * rather than reinstalled without its logging. */
#define _GNU_SOURCE
#include "case.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static void setup(void) {
    struct sock_filter code[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {1, code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) fail("PR_SET_NO_NEW_PRIVS");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, &prog))
        fail("seccomp");
}

static int check(char *why, size_t n) {
    (void)why;
    (void)n;
    return 0;
}
