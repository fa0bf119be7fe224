/* expect: refused: file lock */
/* An open file description lock (fcntl F_OFD_SETLK). */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

static int fd;

static void setup(void) {
    fd = open("file_lock_ofd.data", O_RDWR | O_CREAT, 0600);
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) < 0) fail("F_OFD_SETLK");
}

static int check(char *why, size_t n) {
    int other = open("file_lock_ofd.data", O_RDWR);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    int r = fcntl(other, F_OFD_SETLK, &fl);
    close(other);
    if (r == 0) return differ(why, n, "the OFD lock is no longer held");
    return 0;
}
