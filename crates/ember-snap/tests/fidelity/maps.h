/* For cases about a mapping's flags; include after case.h. */
#include <stdint.h>

/* The VmFlags of the area holding `addr`, from /proc/self/smaps, as " f1 f2 ..." with the
 * userfaultfd flags ("um", "uw", "ui": a restorer's registration) left out; -1 when no area
 * holds `addr`. */
static int vm_flags(uintptr_t addr, char *out, size_t n) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = addr >= s && addr < e;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            size_t used = 0;
            out[0] = 0;
            for (char *t = strtok(line + 8, " \n"); t; t = strtok(NULL, " \n"))
                if (strcmp(t, "um") && strcmp(t, "uw") && strcmp(t, "ui"))
                    used += snprintf(out + used, n - used, " %s", t);
            fclose(f);
            return 0;
        }
    }
    fclose(f);
    return -1;
}
