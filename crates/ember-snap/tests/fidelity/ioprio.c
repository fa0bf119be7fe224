/* expect: exact */
/* I/O priority: best-effort class at level 6 (ioprio_set, IOPRIO_WHO_PROCESS). */
#define _GNU_SOURCE
#include "case.h"
#include "ioprio.h"

static void setup(void) { ioprio_setup(IOPRIO_CLASS_BE, 6); }
