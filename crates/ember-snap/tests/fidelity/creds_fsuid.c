/* expect: exact */
/* A user that set its filesystem uid apart from its effective one and raised an ambient
 * capability, then set SECBIT_NO_CAP_AMBIENT_RAISE and dropped CAP_SETUID and CAP_SETPCAP:
 * the restore needs what the process gave up to set these again (CAP_SETUID for setfsuid,
 * which never reports a failure; the ambient raise before that securebit). */
#define _GNU_SOURCE
#include "case.h"
#include <linux/capability.h>
#include <linux/securebits.h>
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
        static const char *keys[] = {"Uid:", "Gid:", "CapInh:", "CapPrm:", "CapEff:", "CapAmb:"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!strncmp(line, keys[k], strlen(keys[k]))) {
                line[strcspn(line, "\n")] = ' ';
                used += snprintf(out + used, n - used, "%s", line);
            }
    }
    fclose(f);
    snprintf(out + used, n - used, "securebits %#x", prctl(PR_GET_SECUREBITS));
}

static void caps(unsigned permitted, unsigned effective, unsigned inheritable) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{effective, permitted, inheritable}, {0, 0, 0}};
    if (syscall(SYS_capset, &h, d)) fail("capset");
}

static void setup(void) {
    if (prctl(PR_SET_KEEPCAPS, 1)) fail("PR_SET_KEEPCAPS");
    if (setresgid(1000, 1000, 1000)) fail("setresgid");
    if (setresuid(1000, 1000, 1000)) fail("setresuid");
    unsigned keep = 1u << CAP_NET_RAW, tools = (1u << CAP_SETUID) | (1u << CAP_SETPCAP);
    caps(keep | tools, tools, keep);
    setfsuid(2000);
    if (setfsuid(-1) != 2000) fail("setfsuid");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0)) fail("ambient raise");
    if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE))
        fail("PR_SET_SECUREBITS");
    caps(keep, keep, keep);
    snapshot(before, sizeof before);
}

static int check(char *why, size_t n) {
    char now[2048];
    snapshot(now, sizeof now);
    if (strcmp(before, now)) return differ(why, n, "was [%s] is [%s]", before, now);
    return 0;
}
