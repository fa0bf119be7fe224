/* expect: exact */
/* A page with content made PROT_NONE before ready, beside a readable one. check makes it
 * readable, compares, and makes it PROT_NONE again (so a lazy restore's working set holds a
 * page that is PROT_NONE in the image). */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>
#include <sys/mman.h>

static unsigned char *area;

static void setup(void) {
    area = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) fail("mmap");
    for (int i = 0; i < 3 * 4096; i++) area[i] = (unsigned char)(i * 7 + 1);
    if (mprotect(area + 4096, 4096, PROT_NONE)) fail("mprotect");
}

static int check(char *why, size_t n) {
    if (mprotect(area + 4096, 4096, PROT_READ)) return differ(why, n, "mprotect: %s", strerror(errno));
    int bad = -1;
    for (int i = 0; i < 3 * 4096 && bad < 0; i++)
        if (area[i] != (unsigned char)(i * 7 + 1)) bad = i;
    if (mprotect(area + 4096, 4096, PROT_NONE)) return differ(why, n, "mprotect back: %s", strerror(errno));
    if (bad >= 0) return differ(why, n, "byte %d: expected %d, got %d", bad, (unsigned char)(bad * 7 + 1), area[bad]);
    return 0;
}
