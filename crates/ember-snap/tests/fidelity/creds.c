/* expect: exact */
/* An unprivileged user with some capabilities left: user and group ids (real, effective,
 * saved, filesystem differ), supplementary groups, permitted/effective/inheritable/ambient
 * capability sets, a reduced bounding set and securebits. A restore runs as root: without
 * restoring these the process would come back as root with every capability. */
#define _GNU_SOURCE
#include "case.h"
#include <grp.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static char before[2048];

/* The credential lines of /proc/self/status, and the securebits. */
static void snapshot(char *out, size_t n) {
    FILE *f = fopen("/proc/self/status", "r");
    out[0] = 0;
    if (!f) return;
    char line[512];
    size_t used = 0;
    while (fgets(line, sizeof line, f)) {
        static const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:",
                                     "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!strncmp(line, keys[k], strlen(keys[k]))) {
                line[strcspn(line, "\n")] = ' ';
                used += snprintf(out + used, n - used, "%s", line);
            }
    }
    fclose(f);
    snprintf(out + used, n - used, "securebits %d", prctl(PR_GET_SECUREBITS));
}

static void setup(void) {
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT)) fail("PR_CAPBSET_DROP");
    gid_t groups[] = {5, 6, 7};
    if (setgroups(3, groups)) fail("setgroups");
    /* NOROOT, and permitted capabilities kept across the uid change. */
    if (prctl(PR_SET_SECUREBITS, (1 << 0) | (1 << 4))) fail("PR_SET_SECUREBITS");
    if (setresgid(1001, 1002, 1003)) fail("setresgid");
    setfsgid(1003);
    if (setresuid(1000, 1001, 1002)) fail("setresuid");
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{0}};
    d[0].permitted = (1u << CAP_NET_BIND_SERVICE) | (1u << CAP_NET_RAW) | (1u << CAP_KILL);
    d[0].effective = 1u << CAP_NET_BIND_SERVICE;
    d[0].inheritable = 1u << CAP_NET_RAW;
    if (syscall(SYS_capset, &h, d)) fail("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0)) fail("ambient raise");
    snapshot(before, sizeof before);
}

static int check(char *why, size_t n) {
    char now[2048];
    snapshot(now, sizeof now);
    if (strcmp(before, now)) return differ(why, n, "was [%s] is [%s]", before, now);
    return 0;
}
