/* expect: exact */
/* O_PATH descriptors of a regular file and of a directory: they name the file (fstat,
 * openat relative to the directory) but cannot be read. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <sys/stat.h>

static int file_fd, dir_fd;
static int file_flags, dir_flags;
static struct stat file_st, dir_st;

static void setup(void) {
    if (mkdir("o_path.dir", 0700) < 0 && errno != EEXIST) fail("mkdir");
    int f = open("o_path.dir/inside", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (f < 0 || write(f, "inside", 6) != 6) fail("creating o_path.dir/inside");
    close(f);
    file_fd = open("o_path.dir/inside", O_PATH);
    dir_fd = open("o_path.dir", O_PATH | O_DIRECTORY);
    if (file_fd < 0 || dir_fd < 0) fail("O_PATH open");
    file_flags = fcntl(file_fd, F_GETFL);
    dir_flags = fcntl(dir_fd, F_GETFL);
    if (fstat(file_fd, &file_st) < 0 || fstat(dir_fd, &dir_st) < 0) fail("fstat");
}

static int check(char *why, size_t n) {
    if (fcntl(file_fd, F_GETFL) != file_flags || fcntl(dir_fd, F_GETFL) != dir_flags)
        return differ(why, n, "flags %#o/%#o, expected %#o/%#o", fcntl(file_fd, F_GETFL),
                      fcntl(dir_fd, F_GETFL), file_flags, dir_flags);
    char c;
    if (read(file_fd, &c, 1) != -1 || errno != EBADF)
        return differ(why, n, "the O_PATH file descriptor can be read");
    struct stat st;
    if (fstat(file_fd, &st) < 0 || st.st_ino != file_st.st_ino || st.st_dev != file_st.st_dev)
        return differ(why, n, "the O_PATH file descriptor names another file");
    if (fstat(dir_fd, &st) < 0 || st.st_ino != dir_st.st_ino || !S_ISDIR(st.st_mode))
        return differ(why, n, "the O_PATH directory descriptor names another directory");
    int f = openat(dir_fd, "inside", O_RDONLY);
    char buf[8] = "";
    if (f < 0 || read(f, buf, 6) != 6 || memcmp(buf, "inside", 6))
        return differ(why, n, "openat relative to the O_PATH directory failed");
    close(f);
    return 0;
}
