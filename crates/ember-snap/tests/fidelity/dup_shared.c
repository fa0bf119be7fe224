/* expect: exact */
/* One open file description at three numbers (dup, dup2, dup3 with O_CLOEXEC): a position
 * or status flag set through one shows through the others; a second open of the same file
 * stays independent. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>

static int a, b, c, other;

static void setup(void) {
    a = open("dup_shared.data", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (a < 0) fail("creating dup_shared.data");
    if (write(a, "0123456789abcdefghij", 20) != 20) fail("writing");
    b = dup(a);
    c = dup3(a, 17, O_CLOEXEC);
    other = open("dup_shared.data", O_RDONLY);
    if (b < 0 || c != 17 || other < 0) fail("dup");
    lseek(a, 7, SEEK_SET);
    lseek(other, 3, SEEK_SET);
}

static int check(char *why, size_t n) {
    if (lseek(b, 0, SEEK_CUR) != 7 || lseek(c, 0, SEEK_CUR) != 7)
        return differ(why, n, "dups at %ld/%ld, expected 7", (long)lseek(b, 0, SEEK_CUR),
                      (long)lseek(c, 0, SEEK_CUR));
    if (lseek(other, 0, SEEK_CUR) != 3) return differ(why, n, "the other open is not at 3");
    /* A move through one is seen through the others, not through the separate open. */
    lseek(c, 12, SEEK_SET);
    long pa = lseek(a, 0, SEEK_CUR), pb = lseek(b, 0, SEEK_CUR), po = lseek(other, 0, SEEK_CUR);
    lseek(a, 7, SEEK_SET);
    if (pa != 12 || pb != 12) return differ(why, n, "not shared: a at %ld, b at %ld after moving c", pa, pb);
    if (po != 3) return differ(why, n, "the separate open moved with the dups (%ld)", po);
    /* Status flags are the description's too. */
    fcntl(b, F_SETFL, O_APPEND);
    int fa = fcntl(a, F_GETFL);
    fcntl(b, F_SETFL, 0);
    if (!(fa & O_APPEND)) return differ(why, n, "O_APPEND set through b not seen through a");
    if (fcntl(other, F_GETFL) & O_APPEND) return differ(why, n, "the separate open got O_APPEND");
    if (fcntl(a, F_GETFD) != 0 || fcntl(b, F_GETFD) != 0 || fcntl(c, F_GETFD) != FD_CLOEXEC)
        return differ(why, n, "close-on-exec flags %d/%d/%d, expected 0/0/1", fcntl(a, F_GETFD),
                      fcntl(b, F_GETFD), fcntl(c, F_GETFD));
    return 0;
}
