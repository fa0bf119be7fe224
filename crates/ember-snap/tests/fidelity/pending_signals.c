/* expect: exact */
/* Queued signals, blocked: the thread's queue (tgkill, rt_tgsigqueueinfo with values) and
   the process's (kill, sigqueue with values). "check" takes them all (the thread's queue
   comes out first), compares every field with what the first look saw, and queues them
   again as they were. */
#define _GNU_SOURCE
#include "case.h"
#include <signal.h>
#include <sys/syscall.h>

#define N 6
#define PRIVATE 3 /* the first three are the thread's */
static int signo[N], value[N] = {0, 11, 12, 0, 21, 22};
static siginfo_t saved[N];
static sigset_t blocked;

static int take(siginfo_t *got, int max)
{
    int n = 0;
    struct timespec zero = {0, 0};
    while (n < max && sigtimedwait(&blocked, &got[n], &zero) > 0)
        n++;
    return n;
}

static void requeue(siginfo_t *got, int n)
{
    for (int i = 0; i < n; i++) {
        if (i < PRIVATE)
            syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), got[i].si_signo, &got[i]);
        else
            syscall(SYS_rt_sigqueueinfo, getpid(), got[i].si_signo, &got[i]);
    }
}

static int check(char *diff, size_t cap)
{
    siginfo_t got[N + 4];
    int n = take(got, N + 4), bad = 0;
    if (n != N) {
        snprintf(diff, cap, "expected %d queued signals, got %d", N, n);
        bad = 1;
    }
    for (int i = 0; !bad && i < N; i++) {
        siginfo_t *a = &saved[i], *b = &got[i];
        if (a->si_signo != b->si_signo || a->si_code != b->si_code || a->si_errno != b->si_errno ||
            a->si_pid != b->si_pid || a->si_uid != b->si_uid ||
            a->si_value.sival_int != b->si_value.sival_int) {
            snprintf(diff, cap, "signal %d: expected signo %d code %d pid %d value %d, got %d %d %d %d",
                     i, a->si_signo, a->si_code, a->si_pid, a->si_value.sival_int, b->si_signo,
                     b->si_code, b->si_pid, b->si_value.sival_int);
            bad = 1;
        }
    }
    requeue(got, n < N ? n : N);
    return bad;
}

static void setup(void)
{
    signo[0] = SIGUSR1;
    signo[1] = signo[2] = SIGRTMIN + 1;
    signo[3] = SIGUSR2;
    signo[4] = signo[5] = SIGRTMIN + 2;
    sigemptyset(&blocked);
    for (int i = 0; i < N; i++)
        sigaddset(&blocked, signo[i]);
    sigprocmask(SIG_BLOCK, &blocked, 0);
    syscall(SYS_tgkill, getpid(), gettid(), SIGUSR1);
    for (int i = 1; i < PRIVATE; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        si.si_signo = signo[i];
        si.si_code = SI_QUEUE;
        si.si_pid = getpid();
        si.si_uid = getuid();
        si.si_value.sival_int = value[i];
        syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), si.si_signo, &si);
    }
    kill(getpid(), SIGUSR2);
    for (int i = PRIVATE + 1; i < N; i++) {
        union sigval v = {.sival_int = value[i]};
        sigqueue(getpid(), signo[i], v);
    }
    /* The first look: what later looks must find again. */
    int n = take(saved, N);
    for (int i = 0; i < N; i++) {
        if (n != N || saved[i].si_signo != signo[i] || saved[i].si_value.sival_int != value[i]) {
            fprintf(stderr, "setup: signal %d is %d (value %d) of %d\n", i, saved[i].si_signo,
                    saved[i].si_value.sival_int, n);
            exit(2);
        }
    }
    requeue(saved, n);
}
