/* expect: exact */
/* An unprivileged user with some capabilities left: user and group ids (real, effective,
 * saved, filesystem differ), supplementary groups, permitted/effective/inheritable/ambient
 * capability sets, a reduced bounding set and securebits. A restore runs as root: without
 * restoring these the process would come back as root with every capability. */
#define _GNU_SOURCE
#define CRED_KEYS \
    "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"
#define SECUREBITS_FORMAT "securebits %d"
#include "case.h"
#include "creds.h"
#include <grp.h>
#include <sys/fsuid.h>

static void setup(void) {
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT)) fail("PR_CAPBSET_DROP");
    gid_t groups[] = {5, 6, 7};
    if (setgroups(3, groups)) fail("setgroups");
    /* NOROOT, and permitted capabilities kept across the uid change. */
    if (prctl(PR_SET_SECUREBITS, (1 << 0) | (1 << 4))) fail("PR_SET_SECUREBITS");
    if (setresgid(1001, 1002, 1003)) fail("setresgid");
    setfsgid(1003);
    if (setresuid(1000, 1001, 1002)) fail("setresuid");
    caps((1u << CAP_NET_BIND_SERVICE) | (1u << CAP_NET_RAW) | (1u << CAP_KILL),
         1u << CAP_NET_BIND_SERVICE, 1u << CAP_NET_RAW);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0)) fail("ambient raise");
    snapshot(before, sizeof before);
}
