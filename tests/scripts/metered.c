/*
 * The metrics tests' script (tests/metrics.rs): answers with its pid, and
 * does what the query string asks:
 *   sleep=MS     sleeps MS milliseconds first (the script's own time)
 *   segv         crashes
 *   loop         loops until LibCGITimeout cuts it
 *   exit3        exit(3) with nothing sent: a 500
 *   getenvs=N    calls getenv N times (time in callbacks)
 *   body         echoes the request body's length
 * Built with -DTERM_BUSY_MS=N, its terminatefunc spends N ms calling getenv
 * (callback time that belongs to no request).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "libcgi.h"

int libcgi_thread_safe = 1;

static const char *arg(const char *name)
{
    const char *q = getenv("QUERY_STRING");
    size_t n = strlen(name);
    while (q && *q) {
        if (strncmp(q, name, n) == 0 && (q[n] == '=' || q[n] == '&' || q[n] == 0))
            return q[n] == '=' ? q + n + 1 : "";
        q = strchr(q, '&');
        if (q)
            q++;
    }
    return NULL;
}

int processfunc(char *input)
{
    const char *v;
    if ((v = arg("sleep"))) {
        long ms = atol(v);
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    if (arg("segv"))
        *(volatile int *)0 = 1;
    if (arg("loop"))
        for (volatile int i = 0;; i++)
            ;
    if (arg("exit3"))
        exit(3);
    if ((v = arg("getenvs")))
        for (long i = atol(v); i > 0; i--)
            (void)getenv("REQUEST_METHOD");
    lprintf("Content-Type: text/plain\r\nX-Pid: %ld\r\n\r\nok pid=%ld len=%ld", (long)getpid(), (long)getpid(),
            (long)(input ? linput_length() : 0));
    return 0;
}

#ifdef TERM_BUSY_MS
void terminatefunc(void)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        (void)getenv("PATH");
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < TERM_BUSY_MS);
}
#endif
