/* expect: refused: mlockall(MCL_FUTURE) */
/* mlockall(MCL_FUTURE) locks every mapping made later. /proc shows it nowhere (only the
 * areas already locked), so a restore could not set it again: refused at dump. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/mman.h>

static void setup(void) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE)) fail("mlockall");
}

static int check(char *why, size_t n) {
    char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return differ(why, n, "mmap: %s", strerror(errno));
    p[0] = 1;
    unsigned char in = 0;
    int ok = mincore(p, 4096, &in) == 0 && (in & 1);
    munmap(p, 4096);
    if (!ok) return differ(why, n, "a new mapping is not resident under MCL_FUTURE");
    return 0;
}
