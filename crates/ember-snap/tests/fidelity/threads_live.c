/* expect: refused: threads */
/* A second thread is running: one process per image, one thread per process. */
#define _GNU_SOURCE
#include "case.h"
#include <pthread.h>

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) pause();
    return 0;
}

static void setup(void) {
    pthread_t t;
    if (pthread_create(&t, 0, sleeper, 0)) fail("pthread_create");
}

static int check(char *why, size_t n) {
    (void)why;
    (void)n;
    return 0;
}

