/* expect: refused: the file it holds open, */
/* A file held open after it was unlinked: a restore could not open it again by name. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

static int fd;

static void setup(void) {
    fd = open("file_deleted.data", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "kept", 4) != 4 || unlink("file_deleted.data") < 0) fail("setting up");
}

static int check(char *why, size_t n) {
    char buf[4];
    if (pread(fd, buf, 4, 0) != 4 || memcmp(buf, "kept", 4)) return differ(why, n, "content lost");
    return 0;
}
