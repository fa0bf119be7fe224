/* expect: refused: SIGIO goes to */
/* O_ASYNC with the process itself as owner (F_SETOWN): a restored process has another pid. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

static int fd;

static void setup(void) {
    fd = open("/dev/null", O_RDONLY | O_ASYNC);
    if (fd < 0) fail("open");
    if (fcntl(fd, F_SETOWN, getpid()) < 0) fail("F_SETOWN");
}

static int check(char *why, size_t n) {
    if (fcntl(fd, F_GETOWN) != getpid()) return differ(why, n, "owner changed");
    if (!(fcntl(fd, F_GETFL) & O_ASYNC)) return differ(why, n, "O_ASYNC lost");
    return 0;
}
