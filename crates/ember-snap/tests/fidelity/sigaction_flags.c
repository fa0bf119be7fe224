/* expect: exact */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The fidelity protocol: "ready", then answer "check" lines until "exit" or EOF. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = c;
    }
    buf[n] = 0;
    return (int)n;
}

static void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(1);
        s += w;
        n -= (size_t)w;
    }
}

static int serve(int (*check)(char *diff, size_t cap))
{
    char line[64], diff[1024];
    say("ready\n");
    while (read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "exit") == 0)
            return 0;
        if (strcmp(line, "check") != 0)
            continue;
        diff[0] = 0;
        if (check(diff, sizeof diff)) {
            char out[1100];
            snprintf(out, sizeof out, "diff: %s\n", diff);
            say(out);
        } else {
            say("ok\n");
        }
    }
    return 0;
}

/* Signal dispositions with their flags: SIGCHLD default with SA_NOCLDWAIT (children are
   reaped by the kernel), SIGUSR1 ignored with flags and a mask, SIGUSR2 handled. */
static struct sigaction saved[4];
static const int sigs[4] = {SIGCHLD, SIGUSR1, SIGUSR2, SIGPIPE};

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)si; (void)uc;
}

static int check(char *diff, size_t cap)
{
    for (int i = 0; i < 4; i++) {
        struct sigaction now;
        sigaction(sigs[i], 0, &now);
        int same_mask = 1;
        for (int s = 1; s < 65; s++)
            if (sigismember(&now.sa_mask, s) != sigismember(&saved[i].sa_mask, s))
                same_mask = 0;
        if (now.sa_handler != saved[i].sa_handler || now.sa_flags != saved[i].sa_flags || !same_mask) {
            snprintf(diff, cap, "signal %d: expected handler %p flags %#x, got %p flags %#x (mask %s)",
                     sigs[i], (void *)saved[i].sa_handler, saved[i].sa_flags,
                     (void *)now.sa_handler, now.sa_flags, same_mask ? "same" : "differs");
            return 1;
        }
    }
    /* SA_NOCLDWAIT: no zombie; waitpid fails with ECHILD once the child is gone. */
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    int st;
    pid_t w = waitpid(c, &st, 0);
    if (w != -1 || errno != ECHILD) {
        snprintf(diff, cap, "SA_NOCLDWAIT: expected waitpid to fail with ECHILD, got %d", (int)w);
        return 1;
    }
    return 0;
}

int main(void)
{
    struct sigaction a;
    memset(&a, 0, sizeof a);
    a.sa_handler = SIG_DFL;
    a.sa_flags = SA_NOCLDWAIT;
    sigaction(SIGCHLD, &a, 0);
    memset(&a, 0, sizeof a);
    a.sa_handler = SIG_IGN;
    a.sa_flags = SA_RESTART | SA_ONSTACK;
    sigaddset(&a.sa_mask, SIGUSR2);
    sigaction(SIGUSR1, &a, 0);
    memset(&a, 0, sizeof a);
    a.sa_sigaction = on_usr2;
    a.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESETHAND;
    sigaddset(&a.sa_mask, SIGTERM);
    sigaction(SIGUSR2, &a, 0);
    memset(&a, 0, sizeof a);
    a.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &a, 0);
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], 0, &saved[i]);
    return serve(check);
}
