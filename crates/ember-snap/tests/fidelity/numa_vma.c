/* expect: refused: NUMA memory policy of its own */
/* A memory area with its own NUMA policy (mbind MPOL_PREFERRED to node 0): refused at dump
 * by name (a restore sets the task's policy only). */
#define _GNU_SOURCE
#include "case.h"
#include <sys/mman.h>
#include <sys/syscall.h>

#define MPOL_PREFERRED 1
#define MPOL_F_ADDR (1 << 1)

static char *area;

static void setup(void)
{
    area = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        fail("mmap");
    unsigned long node0 = 1;
    if (syscall(SYS_mbind, area, 1 << 16, MPOL_PREFERRED, &node0, 65, 0) != 0)
        fail("mbind");
}

static int check(char *why, size_t n)
{
    int mode = -1;
    if (syscall(SYS_get_mempolicy, &mode, NULL, 0, area, MPOL_F_ADDR) != 0)
        return differ(why, n, "get_mempolicy: %s", strerror(errno));
    if (mode != MPOL_PREFERRED)
        return differ(why, n, "area policy: expected %d, got %d", MPOL_PREFERRED, mode);
    return 0;
}
