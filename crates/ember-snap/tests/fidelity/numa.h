/* For a case about the task's NUMA memory policy; include after case.h. The case's setup()
 * calls policy_setup() with the mode and flags it sets (on node 0: this machine may have one
 * node); check() compares get_mempolicy's mode and node mask with what setup read back. */
#include <sys/syscall.h>

static int saved_mode;
static unsigned long saved_nodes[16];

static int get(int *mode, unsigned long *nodes)
{
    memset(nodes, 0, 16 * sizeof *nodes);
    return (int)syscall(SYS_get_mempolicy, mode, nodes, 16 * 64 + 1, NULL, 0);
}

static void policy_setup(int mode)
{
    unsigned long node0 = 1;
    if (syscall(SYS_set_mempolicy, mode, &node0, 65) != 0)
        fail("set_mempolicy");
    if (get(&saved_mode, saved_nodes) != 0)
        fail("get_mempolicy");
}

static int check(char *why, size_t n)
{
    int mode;
    unsigned long nodes[16];
    if (get(&mode, nodes) != 0)
        return differ(why, n, "get_mempolicy: %s", strerror(errno));
    if (mode != saved_mode || memcmp(nodes, saved_nodes, sizeof nodes) != 0)
        return differ(why, n, "policy: expected mode %#x nodes %#lx, got mode %#x nodes %#lx",
                      saved_mode, saved_nodes[0], mode, nodes[0]);
    return 0;
}
