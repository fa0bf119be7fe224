/* expect: exact */
/* I/O priority: the idle class (ioprio_set, IOPRIO_WHO_PROCESS). */
#define _GNU_SOURCE
#include "case.h"
#include "ioprio.h"

static void setup(void) { ioprio_setup(IOPRIO_CLASS_IDLE, 0); }
