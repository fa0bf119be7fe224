/* expect: exact */
/* An explicit MAP_GROWSDOWN mapping (not the stack): it keeps VM_GROWSDOWN ("gd" in smaps)
 * and its data. */
#define _GNU_SOURCE
#include "case.h"
#include "maps.h"
#include <sys/mman.h>

static char *area;

static void setup(void) {
    area = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN,
                -1, 0);
    if (area == MAP_FAILED) fail("mmap MAP_GROWSDOWN");
    strcpy(area + 3 * 4096, "top of the growsdown area");
}

static int check(char *why, size_t n) {
    char flags[512];
    if (vm_flags((uintptr_t)area + 3 * 4096, flags, sizeof flags) < 0)
        return differ(why, n, "the area is gone");
    if (!strstr(flags, " gd")) return differ(why, n, "VM_GROWSDOWN lost: VmFlags%s", flags);
    if (strcmp(area + 3 * 4096, "top of the growsdown area")) return differ(why, n, "data lost");
    return 0;
}
