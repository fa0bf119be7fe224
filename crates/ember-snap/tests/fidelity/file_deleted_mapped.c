/* expect: refused: the file it maps, */
/* A private mapping of a file that was unlinked (the descriptor closed). */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <sys/mman.h>

static char *map;

static void setup(void) {
    int fd = open("mapped_deleted.data", O_RDWR | O_CREAT | O_TRUNC, 0600);
    char page[4096] = "mapped";
    if (fd < 0 || write(fd, page, sizeof page) != sizeof page) fail("creating");
    map = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) fail("mmap");
    close(fd);
    if (unlink("mapped_deleted.data") < 0) fail("unlink");
}

static int check(char *why, size_t n) {
    if (strcmp(map, "mapped")) return differ(why, n, "content lost");
    return 0;
}
