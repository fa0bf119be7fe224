/* expect: exact */
/* /dev/zero and /dev/urandom held open (never read by the dump: a device has no end), and a
 * private mapping of /dev/zero (anonymous memory) with data in it. */
#define _GNU_SOURCE
#include "case.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static int zero_fd, random_fd;
static int zero_flags, random_flags;
static char *zmap;

static void setup(void) {
    zero_fd = open("/dev/zero", O_RDONLY);
    random_fd = open("/dev/urandom", O_RDONLY | O_NONBLOCK);
    if (zero_fd < 0 || random_fd < 0) fail("opening the devices");
    zero_flags = fcntl(zero_fd, F_GETFL);
    random_flags = fcntl(random_fd, F_GETFL);
    zmap = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, zero_fd, 0);
    if (zmap == MAP_FAILED) fail("mapping /dev/zero");
    strcpy(zmap + 4096, "written into a private /dev/zero mapping");
}

static int is_dev(int fd, unsigned maj, unsigned min) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == maj &&
           minor(st.st_rdev) == min;
}

static int check(char *why, size_t n) {
    if (!is_dev(zero_fd, 1, 5)) return differ(why, n, "fd %d is not /dev/zero", zero_fd);
    if (!is_dev(random_fd, 1, 9)) return differ(why, n, "fd %d is not /dev/urandom", random_fd);
    if (fcntl(zero_fd, F_GETFL) != zero_flags || fcntl(random_fd, F_GETFL) != random_flags)
        return differ(why, n, "flags %#o/%#o, expected %#o/%#o", fcntl(zero_fd, F_GETFL),
                      fcntl(random_fd, F_GETFL), zero_flags, random_flags);
    char buf[64];
    memset(buf, 1, sizeof buf);
    if (read(zero_fd, buf, sizeof buf) != sizeof buf) return differ(why, n, "reading /dev/zero");
    for (size_t i = 0; i < sizeof buf; i++)
        if (buf[i]) return differ(why, n, "/dev/zero gave a nonzero byte");
    if (read(random_fd, buf, sizeof buf) != sizeof buf)
        return differ(why, n, "reading /dev/urandom failed");
    if (strcmp(zmap + 4096, "written into a private /dev/zero mapping"))
        return differ(why, n, "the private /dev/zero mapping lost its data");
    for (int i = 0; i < 4096; i++)
        if (zmap[i] || zmap[2 * 4096 + i]) return differ(why, n, "untouched mapping pages not zero");
    return 0;
}
