/* expect: exact */
/* Every status flag open and fcntl(F_SETFL) can set, one descriptor each, and the access
 * modes: O_APPEND, O_NONBLOCK, O_SYNC, O_DSYNC, O_DIRECT, O_NOATIME, O_ASYNC (no owner; a
 * regular file keeps O_ASYNC from open only, F_SETFL needs a file with ->fasync). */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

#define N 9
static int fds[N], flags[N];
static const int want[N] = {O_RDONLY, O_WRONLY, O_RDWR | O_APPEND, O_RDONLY | O_NONBLOCK,
                            O_WRONLY | O_SYNC, O_WRONLY | O_DSYNC, O_RDONLY | O_DIRECT,
                            O_RDONLY | O_NOATIME, O_RDONLY | O_ASYNC};

static void setup(void) {
    int f = open("fd_flags.data", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0) fail("creating fd_flags.data");
    char block[8192] = "data";
    if (write(f, block, sizeof block) != sizeof block) fail("writing");
    close(f);
    for (int i = 0; i < N; i++) {
        fds[i] = open("fd_flags.data", want[i]);
        if (fds[i] < 0) fail("opening with a flag");
    }
    for (int i = 0; i < N; i++) flags[i] = fcntl(fds[i], F_GETFL);
}

static int check(char *why, size_t n) {
    for (int i = 0; i < N; i++) {
        int got = fcntl(fds[i], F_GETFL);
        if (got != flags[i])
            return differ(why, n, "fd %d: flags %#o, expected %#o", fds[i], got, flags[i]);
    }
    return 0;
}
