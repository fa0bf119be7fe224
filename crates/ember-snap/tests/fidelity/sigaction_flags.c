/* expect: exact */
/* Signal dispositions with their flags: SIGCHLD default with SA_NOCLDWAIT (children are
   reaped by the kernel), SIGUSR1 ignored with flags and a mask, SIGUSR2 handled. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/wait.h>

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

static void setup(void)
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
}
