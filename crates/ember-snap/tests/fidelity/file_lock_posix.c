/* expect: refused: file lock */
/* A POSIX record lock (fcntl F_SETLK) on part of a file. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

static int fd;

static void setup(void) {
    fd = open("file_lock_posix.data", O_RDWR | O_CREAT, 0600);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20};
    if (fd < 0 || fcntl(fd, F_SETLK, &fl) < 0) fail("F_SETLK");
}

static int check(char *why, size_t n) {
    /* Asked through fdinfo: opening and closing the file here would drop a POSIX lock. */
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    int held = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "lock:", 5) && strstr(line, "POSIX") && strstr(line, "WRITE")) held = 1;
    if (f) fclose(f);
    if (!held) return differ(why, n, "the record lock is no longer held");
    return 0;
}
