/* expect: exact */
/* A user that set its filesystem uid apart from its effective one and raised an ambient
 * capability, then set SECBIT_NO_CAP_AMBIENT_RAISE and dropped CAP_SETUID and CAP_SETPCAP:
 * the restore needs what the process gave up to set these again (CAP_SETUID for setfsuid,
 * which never reports a failure; the ambient raise before that securebit). */
#define _GNU_SOURCE
#define CRED_KEYS "Uid:", "Gid:", "CapInh:", "CapPrm:", "CapEff:", "CapAmb:"
#define SECUREBITS_FORMAT "securebits %#x"
#include "case.h"
#include "creds.h"
#include <linux/securebits.h>
#include <sys/fsuid.h>

static void setup(void) {
    if (prctl(PR_SET_KEEPCAPS, 1)) fail("PR_SET_KEEPCAPS");
    if (setresgid(1000, 1000, 1000)) fail("setresgid");
    if (setresuid(1000, 1000, 1000)) fail("setresuid");
    unsigned keep = 1u << CAP_NET_RAW, tools = (1u << CAP_SETUID) | (1u << CAP_SETPCAP);
    caps(keep | tools, tools, keep);
    setfsuid(2000);
    if (setfsuid(-1) != 2000) fail("setfsuid");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0)) fail("ambient raise");
    if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE))
        fail("PR_SET_SECUREBITS");
    caps(keep, keep, keep);
    snapshot(before, sizeof before);
}
