/* expect: exact */
/* Anonymous memory written before the dump and discarded after the restore with
 * MADV_DONTNEED reads back as zeros (anonymous memory's rule; jemalloc and others rely on
 * it), and written again holds the new data; the rest of the area keeps its content. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/mman.h>

#define PAGES 32
static char *area;

static void setup(void) {
    area = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) fail("mmap");
    for (int i = 0; i < PAGES; i++) memset(area + i * 4096, 'a' + i % 26, 4096);
}

static int check(char *why, size_t n) {
    /* Checked on a copy of the state, so `check` can run more than once. */
    for (int i = 0; i < PAGES; i++)
        for (int j = 0; j < 4096; j += 97)
            if (area[i * 4096 + j] != 'a' + i % 26)
                return differ(why, n, "page %d byte %d is %d before discarding", i, j, area[i * 4096 + j]);
    char *copy = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) return differ(why, n, "mmap: %s", strerror(errno));
    memcpy(copy, area, PAGES * 4096);
    if (madvise(area + 8 * 4096, 8 * 4096, MADV_DONTNEED))
        return differ(why, n, "madvise: %s", strerror(errno));
    int bad = -1;
    for (int i = 8; i < 16 && bad < 0; i++)
        for (int j = 0; j < 4096; j++)
            if (area[i * 4096 + j]) { bad = i; break; }
    area[9 * 4096] = 'Z';
    int rewritten = area[9 * 4096] == 'Z';
    memcpy(area, copy, PAGES * 4096);
    munmap(copy, PAGES * 4096);
    if (bad >= 0) return differ(why, n, "page %d reads non-zero after MADV_DONTNEED", bad);
    if (!rewritten) return differ(why, n, "a discarded page does not keep a new write");
    return 0;
}
