/* The protocol every fidelity case speaks (see tests/fidelity.rs): a case defines
 *     static void setup(void);                 -- set the one kind of state up (exit 2 on error)
 *     static int check(char *why, size_t n);   -- 0 when the state is exactly as set up,
 *                                                 otherwise nonzero with `why` saying what differs
 * after `#define _GNU_SOURCE` and `#include "case.h"` at its top. main() runs setup(), says "ready", then answers one command per
 * line read from fd 0 with read(2), a byte at a time (a dump finds the case blocked in read):
 *     check -> "ok" | "diff: WHY"          exit, EOF -> exit 0
 * A case may `#define AFTER_CHECK fn` (declared before this include): main() calls fn() after
 * each answer to check, before reading on; the runner dumps right after the answer, so a
 * blocking call there (a sleep) is what the dump interrupts (see nanosleep.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Writes one protocol line to fd 1 (write(2), no stdio buffering). */
__attribute__((unused)) static void say(const char *fmt, ...) {
    char out[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof out - 2) n = sizeof out - 2;
    out[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(1, out + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(3);
        off += w;
    }
}

/* Formats into `why` (for check()); returns 1 so `return differ(...)` reads well. */
__attribute__((unused)) static int differ(char *why, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return 1;
}

/* Exits 2 naming what failed during setup (the runner reports a broken case). */
__attribute__((unused)) static void fail(const char *what) {
    fprintf(stderr, "setup failed: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void setup(void);
static int check(char *why, size_t n);

static int read_line(char *buf, size_t n) {
    size_t i = 0;
    while (i + 1 < n) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (c == '\n') break;
        buf[i++] = c;
    }
    buf[i] = 0;
    return 0;
}

int main(void) {
    setup();
    say("ready");
    char line[256];
    while (read_line(line, sizeof line) == 0) {
        if (strcmp(line, "check") == 0) {
            char why[900] = "";
            if (check(why, sizeof why) == 0)
                say("ok");
            else
                say("diff: %s", why);
#ifdef AFTER_CHECK
            AFTER_CHECK(); /* a case's own step after its answer (e.g. the sleep a dump finds) */
#endif
        } else if (strcmp(line, "exit") == 0) {
            return 0;
        } else {
            say("unknown command %s", line);
        }
    }
    return 0;
}
