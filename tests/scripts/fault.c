/*
 * A script that misbehaves on request (query string "mode=..."), for the
 * fault-containment tests.  Build flags:
 *   -DMARK_FILE="p"         initfunc/terminatefunc append a line to file p
 *   -DINIT_FAULT_FILE="p"   initfunc crashes while file p exists
 *   -DTERM_FAULT            terminatefunc crashes
 *   -DTERM_LOOP             terminatefunc never returns
 *   -DEXPORT_LWRITE         the script defines its own lwrite (must not leak
 *                           into other scripts)
 */
#include <assert.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "libcgi.h"

int libcgi_thread_safe = 1;

static void mark(const char *what)
{
#ifdef MARK_FILE
    char line[96];
    int fd = open(MARK_FILE, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {
        int n = snprintf(line, sizeof line, "%s %ld\n", what, (long)getpid());
        if (write(fd, line, (size_t)n) < 0) { /* ignore */ }
        close(fd);
    }
#else
    (void)what;
#endif
}

int initfunc(void)
{
#ifdef INIT_FAULT_FILE
    if (access(INIT_FAULT_FILE, F_OK) == 0)
        *(volatile int *)0 = 1;
#endif
    mark("init");
    return 0;
}

void terminatefunc(void)
{
    mark("term");
#ifdef TERM_FAULT
    *(volatile int *)0 = 2;
#endif
#ifdef TERM_LOOP
    for (volatile int i = 0;; i++)
        ;
#endif
}

#ifdef EXPORT_LWRITE
int lwrite(const void *buf, size_t len)
{
    (void)buf;
    (void)len;
    return -1;
}
#endif

static int is(const char *m)
{
    const char *q = getenv("QUERY_STRING");
    size_t n = strlen(m);
    return q && strncmp(q, "mode=", 5) == 0 && strncmp(q + 5, m, n) == 0 && (q[5 + n] == 0 || q[5 + n] == '&');
}

static int recurse(int n)
{
    volatile char pad[1024];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}

int processfunc(char *input)
{
    (void)input;
    if (is("segv"))
        *(volatile int *)0 = 1;
    if (is("bus")) {
        char path[] = "/tmp/libcgi-bus-XXXXXX";
        int fd = mkstemp(path);
        unlink(path);
        volatile char *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        return p[0]; /* the file is empty: SIGBUS */
    }
    if (is("fpe")) {
        /* Both operands volatile: gcc turns 1/x into a comparison. */
        volatile int zero = 0, seven = 7;
        return seven / zero;
    }
    if (is("ill"))
        __builtin_trap();
    if (is("abort"))
        abort();
    if (is("assert"))
        assert(input == (char *)1);
    if (is("recursion"))
        return recurse(0);
    if (is("sigsys"))
        raise(SIGSYS);
    if (is("loop"))
        for (volatile int i = 0;; i++)
            ;
    if (is("loopwrite")) {
        lputs("Content-Type: text/plain\n\n");
        for (;;)
            lwrite("x", 1);
    }
    if (is("partial")) {
        lputs("Content-Type: text/plain\n\n");
        for (int i = 0; i < 100; i++)
            lputs("partial output line\n");
        lflush();
        *(volatile int *)0 = 3;
    }
    if (is("badwrite")) {
        /* A bad pointer handed to our callback: the fault is in the server's
         * code, and must be treated as the server's. */
        lputs("Content-Type: text/plain\n\n");
        return lwrite((const void *)16, 64);
    }
    if (is("exit0")) {
        lputs("Content-Type: text/plain\n\nbefore exit");
        exit(0);
    }
    if (is("exit3"))
        exit(3);
    if (is("_exit0")) {
        lputs("Content-Type: text/plain\n\nbefore _exit");
        _exit(0);
    }
    lprintf("Content-Type: text/plain\n\nok pid=%ld", (long)getpid());
    return 0;
}
