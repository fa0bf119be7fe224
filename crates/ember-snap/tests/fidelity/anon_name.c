/* expect: exact */
/* An anonymous area named with PR_SET_VMA_ANON_NAME ([anon:NAME] in maps). On a kernel
 * without CONFIG_ANON_VMA_NAME the name cannot be set and the case checks the data only. */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

static char *area;
static int named;

/* Whether /proc/self/maps shows `addr`'s area as [anon:NAME]. */
static int has_name(uintptr_t addr, const char *name) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[512], want[128];
    snprintf(want, sizeof want, "[anon:%s]", name);
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && addr >= s && addr < e)
            found = strstr(line, want) != NULL;
    }
    fclose(f);
    return found;
}

static void setup(void) {
    area = mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) fail("mmap");
    strcpy(area, "named area");
    named = prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, area, 2 * 4096, "ember test") == 0;
    if (!named) fprintf(stderr, "anon_name: this kernel cannot name areas (%s)\n", strerror(errno));
}

static int check(char *why, size_t n) {
    if (named && !has_name((uintptr_t)area, "ember test"))
        return differ(why, n, "the area lost its name");
    if (strcmp(area, "named area")) return differ(why, n, "data lost");
    return 0;
}
