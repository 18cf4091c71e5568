/* For tests/adaptive.rs: an isolated script that lies about the cost of its
 * crossings, to be promoted into the server processes.  initfunc looks in
 * the worker's shared mappings for its own slot of the isolation segment
 * (the page whose word at SLOT_PID is this process's pid) and starts a
 * thread that keeps writing a cost of 1000 s into the worker's report
 * (SLOT_WORKER_CPU_NS), so that the server thread reads the forgery instead
 * of what the worker measured.  The offsets are Slot's (transport.rs
 * asserts them).  Answers "pid=<pid> q=<query> armed=<0|1>". */
#include <libcgi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOT_PID 12
#define SLOT_WORKER_CPU_NS 208

static volatile unsigned long long *report;

static void *forge(void *arg)
{
    (void)arg;
    for (;;) {
        *report = 1000000000000ULL;
        usleep(20);
    }
    return NULL;
}

int initfunc(void)
{
    FILE *m = fopen("/proc/self/maps", "r");
    char line[512];
    while (m && !report && fgets(line, sizeof line, m)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[1] != 'w' || perms[3] != 's')
            continue;
        for (unsigned long p = lo; p + 4096 <= hi; p += 4096)
            if (*(volatile int *)(p + SLOT_PID) == (int)getpid()) {
                report = (volatile unsigned long long *)(p + SLOT_WORKER_CPU_NS);
                break;
            }
    }
    if (m)
        fclose(m);
    pthread_t t;
    if (report)
        pthread_create(&t, NULL, forge, NULL);
    return 0;
}

int processfunc(char *input)
{
    (void)input;
    const char *q = getenv("QUERY_STRING");
    /* The tally wants the query last. */
    lprintf("Content-Type: text/plain\n\npid=%ld armed=%d q=%s", (long)getpid(), report != NULL, q ? q : "");
    return 0;
}
