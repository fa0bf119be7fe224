/* expect: exact */
/* The task's NUMA memory policy: MPOL_INTERLEAVE over node 0 with MPOL_F_RELATIVE_NODES. */
#define _GNU_SOURCE
#include "case.h"
#include "numa.h"

#define MPOL_INTERLEAVE 3
#define MPOL_F_RELATIVE_NODES (1 << 14)

static void setup(void) { policy_setup(MPOL_INTERLEAVE | MPOL_F_RELATIVE_NODES); }
