/* A process for ember-snap's tests: it sets up state a restore must bring back, then answers
 * one command per line on stdin (read byte by byte, so a dump finds it blocked in read(0)).
 *
 * usage: testee DATA_FILE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_count;
static void on_usr1(int s) { (void)s; usr1_count++; }

/* Pointers the dynamic loader relocates: they live in RELRO pages of this PIE. */
static const char *const relro_table[] = {"alpha", "beta", "gamma"};

static char *private_map; /* a private file mapping with one page written */
static char *shared_map;  /* a read-only shared file mapping */
static int log_fd = -1;   /* a regular file held open */
static int avx_ok = 1;

static void reply(const char *fmt, ...) {
    char out[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out - 1, fmt, ap);
    va_end(ap);
    out[n++] = '\n';
    if (write(1, out, n) < 0) _exit(3);
}

/* read(0, c, 1) with ymm2-ymm5 holding known values across the syscall. */
static long read_byte_keeping_avx(char *c) {
    static const uint64_t pattern[16] = {
        0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444,
        0x5555555555555555, 0x6666666666666666, 0x7777777777777777, 0x8888888888888888,
        0x9999999999999999, 0xaaaaaaaaaaaaaaaa, 0xbbbbbbbbbbbbbbbb, 0xcccccccccccccccc,
        0xdddddddddddddddd, 0xeeeeeeeeeeeeeeee, 0x0f0f0f0f0f0f0f0f, 0xf0f0f0f0f0f0f0f0};
    uint64_t after[16];
    long ret;
    __asm__ volatile(
        "vmovdqu 0(%[p]), %%ymm2\n\t"
        "vmovdqu 32(%[p]), %%ymm3\n\t"
        "vmovdqu 64(%[p]), %%ymm4\n\t"
        "vmovdqu 96(%[p]), %%ymm5\n\t"
        "syscall\n\t"
        "vmovdqu %%ymm2, 0(%[a])\n\t"
        "vmovdqu %%ymm3, 32(%[a])\n\t"
        "vmovdqu %%ymm4, 64(%[a])\n\t"
        "vmovdqu %%ymm5, 96(%[a])\n\t"
        "vzeroupper\n\t"
        : "=a"(ret)
        : "a"((long)SYS_read), "D"(0L), "S"(c), "d"(1L), [p] "r"(pattern), [a] "r"(after)
        : "rcx", "r11", "memory", "xmm2", "xmm3", "xmm4", "xmm5");
    if (memcmp(pattern, after, sizeof after) != 0) avx_ok = 0;
    return ret;
}

static int read_line(char *buf, size_t n) {
    size_t i = 0;
    while (i + 1 < n) {
        char c;
        long r = read_byte_keeping_avx(&c);
        if (r == 0) return -1;
        if (r < 0) {
            if (r == -EINTR) continue;
            return -1;
        }
        if (c == '\n') break;
        buf[i++] = c;
    }
    buf[i] = 0;
    return (int)i;
}

static pthread_mutex_t pi_mutex;

static void *pi_locker(void *arg) {
    (void)arg;
    int rc = pthread_mutex_lock(&pi_mutex);
    if (rc == 0) pthread_mutex_unlock(&pi_mutex);
    return (void *)(intptr_t)rc;
}

static void *thread_body(void *arg) { return (void *)((intptr_t)arg * 2); }

static int rseq_cpu_on(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) return -2;
    struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
    return (int)rs->cpu_id;
}

static void robust_exit(void) {
    pthread_mutex_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    int p[2];
    if (pipe(p) != 0) _exit(4);
    pid_t watcher = fork();
    if (watcher == 0) {
        char c;
        close(p[1]);
        if (read(p[0], &c, 1) < 0) _exit(5); /* EOF: the parent is gone */
        /* The restored process has exited holding the mutex: the kernel walked its robust
         * list (restored with set_robust_list) and marked the owner dead. */
        int rc = pthread_mutex_lock(m);
        reply("robust %s", rc == EOWNERDEAD ? "ownerdead" : strerror(rc));
        _exit(0);
    }
    close(p[0]);
    pthread_mutex_lock(m);
    /* Exit holding the lock; the watcher's read returns once our end of the pipe closes. */
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    /* Descriptors inherited from whoever started us (a jobserver pipe) would end up in the image. */
    syscall(SYS_close_range, 3, ~0U, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR2);
    sigprocmask(SIG_BLOCK, &blocked, NULL);

    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 2;
    private_map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    shared_map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (private_map == MAP_FAILED || shared_map == MAP_FAILED) return 2;
    private_map[0] = 'X'; /* a private copy of the file's first page */

    char log_path[4096];
    snprintf(log_path, sizeof log_path, "%s.log", argv[1]);
    log_fd = open(log_path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (write(log_fd, "before\n", 7) != 7) return 2;

    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setprotocol(&ma, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&pi_mutex, &ma);
    pthread_mutex_lock(&pi_mutex); /* exercise it once before the dump */
    pthread_mutex_unlock(&pi_mutex);

    char *heap_before = sbrk(0);
    (void)heap_before;
    reply("ready %d", getpid());

    char line[256];
    while (read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "ping") == 0) {
            reply("pong %d", getpid());
        } else if (strcmp(line, "heap") == 0) {
            char *start = sbrk(0);
            char *grown = sbrk(1 << 20);
            memset(grown, 7, 1 << 20);
            char *end = sbrk(0);
            char *big = malloc(64 << 20);
            memset(big, 9, 64 << 20);
            int ok = grown == start && end == start + (1 << 20) && big[12345] == 9;
            free(big);
            reply("heap %s", ok ? "ok" : "bad");
        } else if (strcmp(line, "file") == 0) {
            reply("file %.5s %.5s", private_map, shared_map);
        } else if (strcmp(line, "relro") == 0) {
            reply("relro %s", relro_table[1]);
        } else if (strcmp(line, "sig") == 0) {
            raise(SIGUSR1);
            raise(SIGUSR1);
            reply("sig %d", (int)usr1_count);
        } else if (strcmp(line, "mask") == 0) {
            sigset_t now;
            sigprocmask(SIG_BLOCK, NULL, &now);
            reply("mask usr2=%d usr1=%d", sigismember(&now, SIGUSR2), sigismember(&now, SIGUSR1));
        } else if (strcmp(line, "avx") == 0) {
            reply("avx %s", avx_ok ? "ok" : "bad");
        } else if (strcmp(line, "clock") == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            reply("clock %lld", (long long)ts.tv_sec);
        } else if (strcmp(line, "log") == 0) {
            int ok = write(log_fd, "after\n", 6) == 6;
            reply("log %s", ok ? "ok" : strerror(errno));
        } else if (strcmp(line, "pi") == 0) {
            pthread_mutex_lock(&pi_mutex);
            pthread_t th;
            pthread_create(&th, NULL, pi_locker, NULL);
            usleep(20000); /* the thread now waits in FUTEX_LOCK_PI on our thread id */
            pthread_mutex_unlock(&pi_mutex);
            void *rc;
            pthread_join(th, &rc);
            reply("pi %s", rc == NULL ? "ok" : strerror((int)(intptr_t)rc));
        } else if (strcmp(line, "thread") == 0) {
            pthread_t th;
            void *rc;
            pthread_create(&th, NULL, thread_body, (void *)21);
            pthread_join(th, &rc);
            reply("thread %d", (int)(intptr_t)rc);
        } else if (strcmp(line, "fork") == 0) {
            pid_t c = fork();
            if (c == 0) _exit(42);
            int st = 0;
            waitpid(c, &st, 0);
            reply("fork %d", WEXITSTATUS(st));
        } else if (strcmp(line, "rseq") == 0) {
            if (__rseq_size == 0) {
                reply("rseq off");
            } else if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
                reply("rseq %d %d", rseq_cpu_on(0), 1);
            } else {
                int a = rseq_cpu_on(0);
                int b = rseq_cpu_on(1);
                reply("rseq %d %d", a, b);
            }
        } else if (strcmp(line, "robust-exit") == 0) {
            robust_exit();
        } else if (strcmp(line, "exit") == 0) {
            return 0;
        } else {
            reply("unknown %s", line);
        }
    }
    return 0;
}
