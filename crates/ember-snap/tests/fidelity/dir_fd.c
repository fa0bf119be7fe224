/* expect: exact */
/* A directory open O_RDONLY|O_DIRECTORY, part-way through reading its entries: the rest of
 * the listing comes from where it was. */
#define _GNU_SOURCE
#include "case.h"
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static int dfd, dflags;
static off_t pos;
static char rest[8192];
static struct stat dst;

/* The names left to read from `fd`, one per line (its position moves to the end). */
static int names(int fd, char *out, size_t n) {
    char buf[4096];
    size_t used = 0;
    out[0] = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (got < 0) return -1;
        if (got == 0) return 0;
        for (long off = 0; off < got;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            used += snprintf(out + used, n - used, "%s\n", d->d_name);
            if (used >= n) return -1;
            off += d->d_reclen;
        }
    }
}

static void setup(void) {
    if (mkdir("dir_fd.dir", 0700) < 0 && errno != EEXIST) fail("mkdir");
    char p[64];
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "dir_fd.dir/entry-%02d", i);
        int f = open(p, O_WRONLY | O_CREAT, 0600);
        if (f < 0) fail("creating entries");
        close(f);
    }
    dfd = open("dir_fd.dir", O_RDONLY | O_DIRECTORY);
    if (dfd < 0) fail("opening the directory");
    char small[512];
    if (syscall(SYS_getdents64, dfd, small, sizeof small) <= 0) fail("getdents64");
    pos = lseek(dfd, 0, SEEK_CUR);
    int again = open("dir_fd.dir", O_RDONLY | O_DIRECTORY);
    if (again < 0 || lseek(again, pos, SEEK_SET) != pos || names(again, rest, sizeof rest) < 0)
        fail("listing the rest");
    close(again);
    dflags = fcntl(dfd, F_GETFL);
    fstat(dfd, &dst);
}

static int check(char *why, size_t n) {
    struct stat st;
    if (fstat(dfd, &st) < 0 || st.st_ino != dst.st_ino || !S_ISDIR(st.st_mode))
        return differ(why, n, "fd %d is not the directory", dfd);
    if (fcntl(dfd, F_GETFL) != dflags)
        return differ(why, n, "flags %#o, expected %#o", fcntl(dfd, F_GETFL), dflags);
    off_t now = lseek(dfd, 0, SEEK_CUR);
    if (now != pos) return differ(why, n, "position %lld, expected %lld", (long long)now, (long long)pos);
    static char got[8192];
    int r = names(dfd, got, sizeof got);
    lseek(dfd, pos, SEEK_SET);
    if (r < 0) return differ(why, n, "reading the rest of the directory failed");
    if (strcmp(got, rest)) return differ(why, n, "the rest of the listing differs");
    return 0;
}
