/* expect: exact */
/* Pages moved with mremap before the dump: a 64-page block written, then moved to a fixed
 * spot far away (the old place left unmapped), and a second block grown in place by mremap
 * (its new part zeros). */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>
#include <sys/mman.h>

#define PAGES 64
static unsigned char *moved, *grown, *old;

static uint64_t pattern(uint64_t i) { return i * 0x9e3779b97f4a7c15ULL + 3; }

static void setup(void) {
    old = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *spot = mmap(0, 2 * PAGES * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    grown = mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (old == MAP_FAILED || spot == MAP_FAILED || grown == MAP_FAILED) fail("mmap");
    for (size_t p = 0; p < PAGES; p++) *(uint64_t *)(old + p * 4096) = pattern(p);
    for (size_t i = 0; i < 8 * 4096; i++) grown[i] = (unsigned char)i;
    /* Into the middle of the reservation: PROT_NONE neighbours on both sides. */
    moved = mremap(old, PAGES * 4096, PAGES * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, spot + PAGES / 2 * 4096);
    if (moved == MAP_FAILED) fail("mremap move");
    unsigned char *g = mremap(grown, 8 * 4096, 16 * 4096, MREMAP_MAYMOVE);
    if (g == MAP_FAILED) fail("mremap grow");
    grown = g;
}

static int check(char *why, size_t n) {
    for (size_t p = 0; p < PAGES; p++) {
        uint64_t got = *(uint64_t *)(moved + p * 4096);
        if (got != pattern(p)) return differ(why, n, "moved page %zu: expected %llx, got %llx", p, (unsigned long long)pattern(p), (unsigned long long)got);
        for (size_t k = 8; k < 4096; k++)
            if (moved[p * 4096 + k]) return differ(why, n, "moved page %zu byte %zu not zero", p, k);
    }
    for (size_t i = 0; i < 8 * 4096; i++)
        if (grown[i] != (unsigned char)i) return differ(why, n, "grown block byte %zu changed", i);
    for (size_t i = 8 * 4096; i < 16 * 4096; i++)
        if (grown[i]) return differ(why, n, "grown block's new byte %zu is %d, not zero", i, grown[i]);
    return 0;
}
