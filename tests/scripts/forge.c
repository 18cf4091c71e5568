/* A hostile isolated script that writes its worker's slot of the isolation
 * segment, for tests/adaptive.rs and tests/forge.rs.  initfunc looks in
 * the worker's shared mappings for its own slot (the page whose word at
 * SLOT_PID is this process's pid) and starts a thread that keeps writing
 * into it, so that the server side reads the forgery instead of what the
 * worker wrote:
 * - always, a crossing cost of 1000 s into the worker's report
 *   (SLOT_WORKER_CPU_NS): to be promoted into the server processes;
 * and from the first request whose query names them, on:
 * - "loaded": both load bits (SLOT_LOADED), a load and a reload claimed on
 *   every request;
 * - "served": the slot's request count (SLOT_SERVED) one short of the
 *   sampling period, which made every request sampled;
 * - "pid=<n>": the slot's worker pid (SLOT_PID), which the manager (root)
 *   once killed when the server asked it to kill the worker;
 * - "script=<path>": the slot's script key (SLOT_SCRIPT, where the layout
 *   has one), which once got the worker another script's requests.
 * "dead": the slot marked DEAD (and its `died` the manager's death, where
 * the layout has one, SLOT_DIED) by the live worker, which then waits:
 * that once read as the manager's death, which escapes quarantine.
 * "orphan": forks a child that sleeps (with the slot mapped) and answers
 * "child=<pid>" first; "crash": a SIGSEGV.
 * "hang" makes processfunc never return (for LibCGITimeout).
 * The offsets are Slot's (transport.rs asserts them); -D overrides them
 * for another layout.  Answers "pid=<pid> armed=<0|1> q=<query>". */
#include <libcgi.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SLOT_PID
#define SLOT_PID 4
#endif
#ifndef SLOT_SERVED
#define SLOT_SERVED 96
#endif
#ifndef SLOT_LOADED
#define SLOT_LOADED 104
#endif
#ifndef SLOT_WORKER_CPU_NS
#define SLOT_WORKER_CPU_NS 120
#endif
/* transport.rs SAMPLE, LOADED | LOADED_REPLACED. */
#define SAMPLE 8
#define LOADED_BOTH 3

static volatile char *slot;
static volatile int forge_loaded, forge_served, forge_pid;
static volatile uint64_t forge_script;

static void forge_once(void)
{
    if (!slot)
        return;
    *(volatile uint64_t *)(slot + SLOT_WORKER_CPU_NS) = 1000000000000ULL;
    if (forge_loaded)
        *(volatile uint32_t *)(slot + SLOT_LOADED) = LOADED_BOTH;
    if (forge_served)
        *(volatile uint64_t *)(slot + SLOT_SERVED) = SAMPLE - 1;
    if (forge_pid)
        *(volatile int *)(slot + SLOT_PID) = forge_pid;
#ifdef SLOT_SCRIPT
    if (forge_script)
        *(volatile uint64_t *)(slot + SLOT_SCRIPT) = forge_script;
#endif
}

/* Also after the worker's own writes of each request (the loaded bits,
 * the count at its end). */
static void *forge(void *arg)
{
    (void)arg;
    for (;;) {
        forge_once();
        usleep(20);
    }
    return NULL;
}

int initfunc(void)
{
    FILE *m = fopen("/proc/self/maps", "r");
    char line[512];
    while (m && !slot && fgets(line, sizeof line, m)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[1] != 'w' || perms[3] != 's')
            continue;
        for (unsigned long p = lo; p + 4096 <= hi; p += 4096)
            if (*(volatile int *)(p + SLOT_PID) == (int)getpid()) {
                slot = (volatile char *)p;
                break;
            }
    }
    if (m)
        fclose(m);
    pthread_t t;
    if (slot)
        pthread_create(&t, NULL, forge, NULL);
    return 0;
}

/* policy.rs `key`: FNV-1a of the path, | 1. */
static uint64_t key(const char *path, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)path[i]) * 0x100000001b3ULL;
    return h | 1;
}

int processfunc(char *input)
{
    (void)input;
    const char *q = getenv("QUERY_STRING");
    q = q ? q : "";
    if (strstr(q, "loaded"))
        forge_loaded = 1;
    if (strstr(q, "served"))
        forge_served = 1;
    const char *p = strstr(q, "pid=");
    if (p)
        forge_pid = atoi(p + 4);
    const char *s = strstr(q, "script=");
    if (s) {
        s += 7;
        forge_script = key(s, strcspn(s, "&"));
    }
    /* Before the server reads any of it again (the script key: at once,
     * deterministically, as the server wrote its own before this call). */
    forge_once();
    if (strstr(q, "crash"))
        *(volatile int *)8 = 1;
    if (strstr(q, "orphan")) {
        pid_t c = fork();
        if (c == 0)
            for (;;)
                pause();
        lprintf("Content-Type: text/plain\n\nchild=%ld ", (long)c);
        lprintf("pid=%ld armed=%d q=%s", (long)getpid(), slot != NULL, q);
        return 0;
    }
    /* The tally wants the query last. */
    lprintf("Content-Type: text/plain\n\npid=%ld armed=%d q=%s", (long)getpid(), slot != NULL, q);
    if (strstr(q, "dead")) {
#ifdef SLOT_DIED
        *(volatile int *)(slot + SLOT_DIED) = INT_MIN;
#endif
        /* transport.rs DEAD, and the server thread woken as the manager
         * wakes it. */
        __atomic_store_n((uint32_t *)slot, 4, __ATOMIC_RELEASE);
        syscall(SYS_futex, slot, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        for (;;)
            pause();
    }
    if (strstr(q, "hang")) {
        lflush();
        for (;;)
            pause();
    }
    return 0;
}
