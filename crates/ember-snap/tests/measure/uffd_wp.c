/* Dirty tracking on this kernel: userfaultfd write-protect against page comparison.
 * Not part of the test suite (docs/snap.md quotes its output):
 *     gcc -O2 -pthread -o /tmp/uffd_wp crates/ember-snap/tests/measure/uffd_wp.c && /tmp/uffd_wp 20000
 * Arms write-protection on N present anonymous pages, times the first write to each (a
 * write-protect fault resolved by a handler thread that records the page and lifts the
 * protection), a second write (no fault), and a 4 KiB memcmp of each page against a copy
 * (what a dump compares per page). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd;
static long n;
static volatile long faults;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static void *handler(void *arg) {
    (void)arg;
    for (;;) {
        struct uffd_msg m;
        ssize_t r = read(uffd, &m, sizeof m);
        if (r != sizeof m) {
            if (r < 0 && errno == EINTR) continue;
            die("read uffd");
        }
        if (m.event != UFFD_EVENT_PAGEFAULT || !(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)) continue;
        struct uffdio_writeprotect wp = {
            .range = {.start = m.arg.pagefault.address & ~4095ULL, .len = 4096},
            .mode = 0, /* lift the protection and wake the writer */
        };
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT (lift)");
        faults++;
    }
    return 0;
}

int main(int argc, char **argv) {
    n = argc > 1 ? atol(argv[1]) : 20000;
    size_t len = n * 4096;
    unsigned char *a = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    unsigned char *copy = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (a == MAP_FAILED || copy == MAP_FAILED) die("mmap");
    for (long i = 0; i < n; i++) a[i * 4096] = (unsigned char)i, a[i * 4096 + 4095] = 1;
    memcpy(copy, a, len);

    uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP};
    if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API (write-protect feature)");
    struct uffdio_register reg = {.range = {.start = (uintptr_t)a, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER (write-protect mode)");
    pthread_t th;
    pthread_create(&th, 0, handler, 0);

    double t0 = now();
    struct uffdio_writeprotect wp = {.range = {.start = (uintptr_t)a, .len = len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT (arm)");
    double t1 = now();
    for (long i = 0; i < n; i++) a[i * 4096 + 1] = 7;
    double t2 = now();
    for (long i = 0; i < n; i++) a[i * 4096 + 2] = 8;
    double t3 = now();
    /* What a dump does per page instead: compare it with the parent's (equal: the whole
     * page is read, the common case). */
    memcpy(copy, a, len);
    double t4 = now();
    long same = 0;
    for (long i = 0; i < n; i++) same += memcmp(a + i * 4096, copy + i * 4096, 4096) == 0;
    double t5 = now();
    printf("pages %ld: arm write-protect %.3f us/page; first write (wp fault, handler lifts) %.2f us/page "
           "(%ld faults); second write %.3f us/page; memcmp of equal pages %.3f us/page (%ld)\n",
           n, (t1 - t0) * 1e6 / n, (t2 - t1) * 1e6 / n, (long)faults, (t3 - t2) * 1e6 / n,
           (t5 - t4) * 1e6 / n, same);
    return 0;
}
