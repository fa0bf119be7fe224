/* expect: exact */
/* The heap comes back as the heap: brk memory with content, that grows with brk after the
 * restore (new part zero, named [heap] in /proc/self/maps) and shrinks. (Under the mapped
 * policy the restored part is a mapping of the image's memfd: docs/snap.md.) */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>

static char *base;
static const size_t LEN = 20 * 4096;

static int heap_named(uintptr_t addr) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[512];
    int ok = 0;
    while (fgets(line, sizeof line, f)) {
        uintptr_t lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo <= addr && addr < hi)
            ok = strstr(line, "[heap]") != 0;
    }
    fclose(f);
    return ok;
}

static void setup(void) {
    base = sbrk(LEN);
    if (base == (void *)-1) fail("sbrk");
    for (size_t i = 0; i < LEN; i++) base[i] = (char)(i * 7);
}

static int check(char *why, size_t n) {
    for (size_t i = 0; i < LEN; i++)
        if (base[i] != (char)(i * 7)) return differ(why, n, "heap byte %zu changed", i);
    char *more = sbrk(8 * 4096);
    if (more == (void *)-1) return differ(why, n, "sbrk grow: %s", strerror(errno));
    for (size_t i = 0; i < 8 * 4096; i++)
        if (more[i]) return differ(why, n, "new heap byte %zu is not zero", i);
    memset(more, 1, 8 * 4096);
    if (!heap_named((uintptr_t)more)) return differ(why, n, "grown brk area is not [heap]");
    if (sbrk(-8 * 4096) == (void *)-1) return differ(why, n, "sbrk shrink: %s", strerror(errno));
    return 0;
}
