/* expect: exact */
/* The task's NUMA memory policy: MPOL_BIND to node 0 with MPOL_F_STATIC_NODES
 * (set_mempolicy; this machine may have one node). */
#define _GNU_SOURCE
#include "case.h"
#include "numa.h"

#define MPOL_BIND 2
#define MPOL_F_STATIC_NODES (1 << 15)

static void setup(void) { policy_setup(MPOL_BIND | MPOL_F_STATIC_NODES); }
