/* expect: refused: working directory */
/* The working directory was removed: a restore could not enter it (or would enter another
 * directory of the same name). */
#define _GNU_SOURCE
#include "case.h"
#include <sys/stat.h>

static struct stat before;

static void setup(void) {
    if (mkdir("gone", 0700) < 0 || chdir("gone") < 0 || stat(".", &before) < 0) fail("entering gone");
    if (rmdir("../gone") < 0) fail("rmdir");
}

static int check(char *why, size_t n) {
    struct stat st;
    if (stat(".", &st) < 0 || st.st_ino != before.st_ino || st.st_nlink != 0)
        return differ(why, n, "the working directory is not the removed one");
    return 0;
}
