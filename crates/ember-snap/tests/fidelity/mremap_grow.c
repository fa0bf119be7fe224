/* expect: exact */
/* An anonymous area with content, grown in place by mremap after the restore (glibc's
 * realloc of large blocks, a growing bytearray): the old part keeps its content, the new
 * part reads zeros and takes writes (no SIGBUS), and an area moved by mremap keeps its
 * content at the new place. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/mman.h>

#define PAGES 16
static char *area;

static void setup(void) {
    /* Room after the area, so it can grow in place: reserve, then give the tail back. */
    char *room = mmap(0, 4 * PAGES * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (room == MAP_FAILED) fail("mmap");
    munmap(room + PAGES * 4096, 3 * PAGES * 4096);
    area = mmap(room, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (area == MAP_FAILED) fail("mmap fixed");
    for (int i = 0; i < PAGES; i++) memset(area + i * 4096, 'A' + i, 4096);
}

static int content_ok(const char *a, char *why, size_t n, const char *where) {
    for (int i = 0; i < PAGES; i++)
        for (int j = 0; j < 4096; j += 111)
            if (a[i * 4096 + j] != 'A' + i)
                return differ(why, n, "%s: page %d reads %d", where, i, a[i * 4096 + j]);
    return 0;
}

static int check(char *why, size_t n) {
    if (content_ok(area, why, n, "before growing")) return 1;
    char *grown = mremap(area, PAGES * 4096, 2 * PAGES * 4096, 0);
    if (grown == MAP_FAILED) return differ(why, n, "mremap in place: %s", strerror(errno));
    int bad = -1;
    for (int i = PAGES * 4096; i < 2 * PAGES * 4096 && bad < 0; i++)
        if (grown[i]) bad = i / 4096;
    grown[2 * PAGES * 4096 - 1] = 'x';
    if (content_ok(grown, why, n, "after growing")) return 1;
    /* Back to its size, and moved away and back: content follows the memory. */
    if (mremap(grown, 2 * PAGES * 4096, PAGES * 4096, 0) == MAP_FAILED)
        return differ(why, n, "mremap shrink: %s", strerror(errno));
    char *away = mmap(0, PAGES * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *moved = mremap(area, PAGES * 4096, PAGES * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, away);
    if (moved == MAP_FAILED) return differ(why, n, "mremap move: %s", strerror(errno));
    if (content_ok(moved, why, n, "after moving")) return 1;
    if (mremap(moved, PAGES * 4096, PAGES * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, area) == MAP_FAILED)
        return differ(why, n, "mremap back: %s", strerror(errno));
    if (bad >= 0) return differ(why, n, "grown page %d reads non-zero", bad);
    return 0;
}
