/* expect: refused: file lock */
/* A flock() lock: a restored process could not take it again reliably (another process may
 * hold it by then), so the dump refuses. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <sys/file.h>

static int fd;

static void setup(void) {
    fd = open("file_lock.data", O_RDWR | O_CREAT, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) < 0) fail("flock");
}

static int check(char *why, size_t n) {
    /* Another open file description cannot take it while we hold it. */
    int other = open("file_lock.data", O_RDWR);
    int r = flock(other, LOCK_EX | LOCK_NB);
    close(other);
    if (r == 0) return differ(why, n, "the lock is no longer held");
    return 0;
}
