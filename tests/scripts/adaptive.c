/* For tests/adaptive.rs: answers "pid=<pid> q=<query>"; `crash` in the
 * query faults; initfunc and terminatefunc append "init <pid>" and
 * "term <pid>" to LIFE_LOG, so a test sees which domains loaded and
 * dropped the script. */
#include <libcgi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LIFE_LOG
#define LIFE_LOG "/dev/null"
#endif

static void life(const char *what)
{
    FILE *f = fopen(LIFE_LOG, "a");
    if (f) {
        fprintf(f, "%s %ld\n", what, (long)getpid());
        fclose(f);
    }
}

int initfunc(void)
{
    life("init");
    return 0;
}

void terminatefunc(void)
{
    life("term");
}

int processfunc(char *input)
{
    (void)input;
    const char *q = getenv("QUERY_STRING");
    if (q && strstr(q, "crash")) {
        volatile int *p = NULL;
        *p = 1;
    }
    lprintf("Content-Type: text/plain\n\npid=%ld q=%s", (long)getpid(), q ? q : "");
    return 0;
}
