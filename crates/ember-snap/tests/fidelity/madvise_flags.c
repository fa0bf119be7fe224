/* expect: exact */
/* Area flags a process sets with madvise and mlock, one page each: MADV_DONTFORK ("dc"),
 * MADV_DONTDUMP ("dd"), MADV_HUGEPAGE ("hg"), MADV_NOHUGEPAGE ("nh"), MADV_WIPEONFORK ("wf"),
 * MADV_SEQUENTIAL ("sr"), MADV_RANDOM ("rr"), mlock ("lo"); smaps must show the same flags
 * for every page after a restore (a restorer's userfaultfd registration, "um", aside). */
#define _GNU_SOURCE
#include "case.h"
#include "maps.h"
#include <sys/mman.h>

#define PAGES 8
static char *area;
static char flags[PAGES][128];

static void setup(void) {
    area = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) fail("mmap");
    for (int i = 0; i < PAGES; i++) area[i * 4096] = (char)('a' + i);
    const int advice[] = {MADV_DONTFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                          MADV_WIPEONFORK, MADV_SEQUENTIAL, MADV_RANDOM};
    for (int i = 0; i < 7; i++)
        if (madvise(area + i * 4096, 4096, advice[i]) < 0) fail("madvise");
    if (mlock(area + 7 * 4096, 4096) < 0) fail("mlock");
    for (int i = 0; i < PAGES; i++)
        if (vm_flags((uintptr_t)area + i * 4096, flags[i], sizeof flags[i]) < 0) fail("smaps");
}

static int check(char *why, size_t n) {
    char now[128];
    for (int i = 0; i < PAGES; i++) {
        if (vm_flags((uintptr_t)area + i * 4096, now, sizeof now) < 0)
            return differ(why, n, "page %d is unmapped", i);
        if (strcmp(now, flags[i]))
            return differ(why, n, "page %d VmFlags%s, expected%s", i, now, flags[i]);
        if (area[i * 4096] != (char)('a' + i)) return differ(why, n, "page %d lost its data", i);
    }
    return 0;
}
