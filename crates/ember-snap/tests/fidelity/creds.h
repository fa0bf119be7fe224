/* For a case about credentials; include after case.h, with defined before it
 *     CRED_KEYS         the /proc/self/status line prefixes compared ("Uid:", "Gid:", ...)
 *     SECUREBITS_FORMAT how the securebits are written after them ("securebits %d")
 * The case's setup() ends with snapshot(before, sizeof before); check() compares a new
 * snapshot with it. */
#include <linux/capability.h>
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
        static const char *keys[] = {CRED_KEYS};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!strncmp(line, keys[k], strlen(keys[k]))) {
                line[strcspn(line, "\n")] = ' ';
                used += snprintf(out + used, n - used, "%s", line);
            }
    }
    fclose(f);
    snprintf(out + used, n - used, SECUREBITS_FORMAT, prctl(PR_GET_SECUREBITS));
}

/* Sets the low 32 capabilities' sets (capset, version 3), exits 2 if it cannot. */
static void caps(unsigned permitted, unsigned effective, unsigned inheritable) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{effective, permitted, inheritable}, {0, 0, 0}};
    if (syscall(SYS_capset, &h, d)) fail("capset");
}

static int check(char *why, size_t n) {
    char now[2048];
    snapshot(now, sizeof now);
    if (strcmp(before, now)) return differ(why, n, "was [%s] is [%s]", before, now);
    return 0;
}
