/* expect: exact */
/* Memory areas with NUMA policies of their own (mbind): MPOL_PREFERRED to node 0, what
 * OpenBLAS sets on its buffers (MPOL_PREFERRED with no nodes: MPOL_LOCAL), and MPOL_BIND with
 * MPOL_F_STATIC_NODES on the middle of an area (mbind splits it), its pages touched. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/mman.h>
#include <sys/syscall.h>

#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_F_STATIC_NODES (1 << 15)
#define MPOL_F_ADDR (1 << 1)
#define AREA (1 << 16)

static char *areas[3];
static char *probes[5];
static int saved_mode[5];
static unsigned long saved_nodes[5][16];

static int get(char *at, int *mode, unsigned long *nodes)
{
    memset(nodes, 0, 16 * sizeof *nodes);
    return (int)syscall(SYS_get_mempolicy, mode, nodes, 16 * 64 + 1, at, MPOL_F_ADDR);
}

static void setup(void)
{
    for (int i = 0; i < 3; i++) {
        areas[i] = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (areas[i] == MAP_FAILED)
            fail("mmap");
    }
    unsigned long node0 = 1;
    if (syscall(SYS_mbind, areas[0], AREA, MPOL_PREFERRED, &node0, 65, 0) != 0)
        fail("mbind preferred");
    if (syscall(SYS_mbind, areas[1], AREA, MPOL_PREFERRED, NULL, 0, 0) != 0)
        fail("mbind local");
    if (syscall(SYS_mbind, areas[2] + 4096, 4096 * 4, MPOL_BIND | MPOL_F_STATIC_NODES, &node0,
                65, 0) != 0)
        fail("mbind bind");
    memset(areas[2], 7, AREA);
    char *p[5] = {areas[0], areas[1], areas[2], areas[2] + 8192, areas[2] + AREA - 4096};
    for (int i = 0; i < 5; i++) {
        probes[i] = p[i];
        if (get(p[i], &saved_mode[i], saved_nodes[i]) != 0)
            fail("get_mempolicy");
    }
}

static int check(char *why, size_t n)
{
    for (int i = 0; i < 5; i++) {
        int mode;
        unsigned long nodes[16];
        if (get(probes[i], &mode, nodes) != 0)
            return differ(why, n, "get_mempolicy %d: %s", i, strerror(errno));
        if (mode != saved_mode[i] || memcmp(nodes, saved_nodes[i], sizeof nodes) != 0)
            return differ(why, n,
                          "area %d policy: expected mode %#x nodes %#lx, got mode %#x nodes %#lx",
                          i, saved_mode[i], saved_nodes[i][0], mode, nodes[0]);
    }
    for (int i = 0; i < AREA; i++)
        if (areas[2][i] != 7)
            return differ(why, n, "byte %d of the split area: %d", i, areas[2][i]);
    return 0;
}
