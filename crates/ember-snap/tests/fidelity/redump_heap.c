/* expect: exact */
/* A spread of heap and anonymous pages written before ready: small malloc blocks on the brk
 * heap, a big mmap'd block with every third page written, and a sparse 256 MiB reservation
 * with a few pages written far apart (the rest reads as zeros). A re-dump of a lazily restored
 * process must find every one of them, touched or not. */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>
#include <sys/mman.h>

#define SMALL 200
#define BIG (8u << 20)
#define SPARSE (256ul << 20)
static char *small[SMALL];
static unsigned char *big, *sparse;

static uint64_t pattern(uint64_t i) { return i * 0x9e3779b97f4a7c15ULL + 11; }

static void setup(void) {
    for (int i = 0; i < SMALL; i++) {
        small[i] = malloc(700 + i * 13);
        if (!small[i]) fail("malloc");
        memset(small[i], (char)pattern(i), 700 + i * 13);
    }
    big = malloc(BIG);
    sparse = mmap(0, SPARSE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!big || sparse == MAP_FAILED) fail("allocating");
    for (size_t p = 0; p < BIG / 4096; p += 3) *(uint64_t *)(big + p * 4096 + 8) = pattern(p);
    for (size_t p = 0; p < SPARSE / 4096; p += 4099) *(uint64_t *)(sparse + p * 4096 + 16) = pattern(p);
}

static int check(char *why, size_t n) {
    for (int i = 0; i < SMALL; i++)
        for (int k = 0; k < 700 + i * 13; k++)
            if (small[i][k] != (char)pattern(i)) return differ(why, n, "heap block %d byte %d reads %d", i, k, small[i][k]);
    for (size_t p = 0; p < BIG / 4096; p++) {
        uint64_t want = p % 3 ? 0 : pattern(p), got = *(uint64_t *)(big + p * 4096 + 8);
        if (got != want) return differ(why, n, "big block page %zu: expected %llx, got %llx", p, (unsigned long long)want, (unsigned long long)got);
    }
    for (size_t p = 0; p < SPARSE / 4096; p += 4099)
        if (*(uint64_t *)(sparse + p * 4096 + 16) != pattern(p)) return differ(why, n, "sparse page %zu changed", p);
    /* A few pages between the written ones must still be zeros. */
    for (size_t p = 1; p < SPARSE / 4096; p += 8191)
        if (p % 4099 && sparse[p * 4096 + 100]) return differ(why, n, "sparse page %zu is not zero", p);
    return 0;
}
