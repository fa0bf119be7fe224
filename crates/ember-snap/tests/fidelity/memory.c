/* expect: exact */
/* Private memory of every ordinary kind: static data, bss, heap (brk and mmap'd), stack, and
 * an anonymous mapping with pages written at both ends and a hole (zeros) between. */
#define _GNU_SOURCE
#include "case.h"
#include <stdint.h>
#include <sys/mman.h>

static char data_area[5000] = "initialised data";
static uint64_t bss_area[2048];
static char *small_heap, *big_heap, *anon;
static const size_t ANON = 64 * 4096;

static uint64_t pattern(uint64_t i) { return i * 0x9e3779b97f4a7c15ULL + 7; }

static void setup(void) {
    small_heap = malloc(3000);
    big_heap = malloc(1 << 20); /* glibc mmaps this */
    anon = mmap(0, ANON, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!small_heap || !big_heap || anon == MAP_FAILED) fail("allocating");
    for (size_t i = 0; i < 3000; i++) small_heap[i] = (char)pattern(i);
    for (size_t i = 0; i < (1 << 20); i += 4096) big_heap[i] = (char)pattern(i);
    for (size_t i = 0; i < 2048; i++) bss_area[i] = pattern(i);
    data_area[4999] = 'z';
    anon[0] = 'a';
    anon[ANON - 1] = 'b';
}

static int check(char *why, size_t n) {
    volatile char stack_probe[8192];
    for (size_t i = 0; i < sizeof stack_probe; i += 512) stack_probe[i] = (char)i;
    if (strcmp(data_area, "initialised data") || data_area[4999] != 'z')
        return differ(why, n, "static data changed");
    for (size_t i = 0; i < 2048; i++)
        if (bss_area[i] != pattern(i)) return differ(why, n, "bss word %zu changed", i);
    for (size_t i = 0; i < 3000; i++)
        if (small_heap[i] != (char)pattern(i)) return differ(why, n, "heap byte %zu changed", i);
    for (size_t i = 0; i < (1 << 20); i++) {
        char want = i % 4096 ? 0 : (char)pattern(i);
        if (big_heap[i] != want) return differ(why, n, "mmap'd heap byte %zu changed", i);
    }
    for (size_t i = 1; i < ANON - 1; i++)
        if (anon[i]) return differ(why, n, "a hole in the anonymous mapping reads %d at %zu", anon[i], i);
    if (anon[0] != 'a' || anon[ANON - 1] != 'b') return differ(why, n, "anonymous ends changed");
    return 0;
}

