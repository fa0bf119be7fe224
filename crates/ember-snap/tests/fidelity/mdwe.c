/* expect: refused: PR_SET_MDWE */
/* Memory-deny-write-execute (PR_SET_MDWE): no mapping may become writable and executable.
   A restorer cannot set it again, and the dump's query area is one: refused at dump. */
#define _GNU_SOURCE
#include "case.h"
#include <sys/prctl.h>

#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1

static void setup(void)
{
    if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0)
        fail("prctl(PR_SET_MDWE)");
}

static int check(char *why, size_t n)
{
    int got = prctl(PR_GET_MDWE, 0, 0, 0, 0);
    if (got != PR_MDWE_REFUSE_EXEC_GAIN)
        return differ(why, n, "PR_GET_MDWE: expected %d, got %d", PR_MDWE_REFUSE_EXEC_GAIN, got);
    return 0;
}
