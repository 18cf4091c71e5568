/*
 * The reload tests' script: it notices when the module treats one mapped
 * object as two scripts.  Everything it knows lives in its own statics, which
 * belong to the mapping: a fresh dlopen of the file starts them at zero, a
 * second initfunc on the same mapping finds them set.
 *
 * Build flags: -DVERSION=n (the version it reports), -DTHREAD_SAFE.
 * Query string: "crash" segfaults, "hold=ms" sleeps that long inside.
 *
 * The body: "version=V state=S inits=I calls=C bad=B pid=P", where S is the
 * version the state made by initfunc belongs to, I the initfuncs this mapping
 * has seen, C the calls since its last initfunc, and B a bit set of what went
 * wrong: 1 initfunc on live state, 2 terminatefunc while a call was running,
 * 4 a call after terminatefunc (or before initfunc), 8 two calls in flight
 * at once although the script is not thread-safe.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "libcgi.h"

#ifndef VERSION
#define VERSION 0
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

#ifdef THREAD_SAFE
int libcgi_thread_safe = 1;
#endif

static atomic_int inits, live, in_flight, calls, sticky;
static char *_Atomic state;

int initfunc(void)
{
    atomic_fetch_add(&inits, 1);
    if (atomic_exchange(&live, 1))
        atomic_fetch_or(&sticky, 1);
    char *s = malloc(32);
    strcpy(s, "v" STR(VERSION));
    atomic_store(&calls, 0);
    atomic_store(&state, s);
    return 0;
}

void terminatefunc(void)
{
    if (atomic_load(&in_flight) > 0)
        atomic_fetch_or(&sticky, 2);
    atomic_store(&live, 0);
    char *s = atomic_exchange(&state, NULL);
    if (s) {
        memset(s, 'X', 31);
        free(s);
    }
}

int processfunc(char *input)
{
    (void)input;
    int bad = 0;
    int n = atomic_fetch_add(&in_flight, 1) + 1;
#ifndef THREAD_SAFE
    if (n > 1)
        bad |= 8;
#else
    (void)n;
#endif
    const char *q = getenv("QUERY_STRING");
    if (q && strcmp(q, "crash") == 0)
        raise(SIGSEGV);
    int hold = q && strncmp(q, "hold=", 5) == 0 ? atoi(q + 5) : 0;
    if (hold > 0)
        usleep((useconds_t)hold * 1000);
    char copy[32] = "none";
    char *s = atomic_load(&state);
    if (!atomic_load(&live) || !s)
        bad |= 4;
    else
        snprintf(copy, sizeof copy, "%s", s);
    int c = atomic_fetch_add(&calls, 1) + 1;
    bad |= atomic_load(&sticky);
    lprintf("Content-Type: text/plain\r\n\r\n");
    lprintf("version=%d state=%s inits=%d calls=%d bad=%d pid=%ld\n", VERSION, copy, atomic_load(&inits), c, bad,
            (long)getpid());
    atomic_fetch_sub(&in_flight, 1);
    return 0;
}
