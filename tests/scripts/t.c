/*
 * The test suite's script.  What it does is chosen per request by the query
 * string ("mode=..."), and per build by -D flags:
 *   -DNO_PROCESSFUNC      export no processfunc
 *   -DINIT_FAIL_FILE="p"  initfunc fails while file p exists
 *   -DMARK_FILE="p"       initfunc/terminatefunc append a line to file p
 *   -DVERSION="v"         the version string reported by mode=version
 *   -DTHREAD_SAFE         declare libcgi_thread_safe = 1
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "libcgi.h"

#ifndef VERSION
#define VERSION "v0"
#endif

#ifdef THREAD_SAFE
int libcgi_thread_safe = 1;
#endif

static int init_count;
static volatile int in_flight, max_in_flight;

static void mark(const char *what)
{
#ifdef MARK_FILE
    char line[128];
    int fd = open(MARK_FILE, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {
        int n = snprintf(line, sizeof line, "%s %s %ld\n", what, VERSION, (long)getpid());
        if (write(fd, line, (size_t)n) < 0) { /* nothing to do */ }
        close(fd);
    }
#else
    (void)what;
#endif
}

int initfunc(void)
{
#ifdef INIT_FAIL_FILE
    if (access(INIT_FAIL_FILE, F_OK) == 0)
        return 7;
#endif
    init_count++;
    mark("init");
    return 0;
}

void terminatefunc(void)
{
    mark("term");
}

/* The script's own definition of a libc name: it must win inside the script. */
long random(void)
{
    return 42;
}

static int is_mode(const char *m)
{
    const char *q = getenv("QUERY_STRING");
    size_t n = strlen(m);
    return q && strncmp(q, "mode=", 5) == 0 && strncmp(q + 5, m, n) == 0 && (q[5 + n] == 0 || q[5 + n] == '&');
}

static long param(const char *name, long dflt)
{
    const char *q = getenv("QUERY_STRING");
    const char *p = q ? strstr(q, name) : NULL;
    return p && p[strlen(name)] == '=' ? atol(p + strlen(name) + 1) : dflt;
}

static const char *env_or(const char *n)
{
    const char *v = getenv(n);
    return v ? v : "(null)";
}

/* getenv reached through a pointer taken in data (R_X86_64_64 relocation). */
static char *(*const getenv_ptr)(const char *) = getenv;

#ifdef NO_PROCESSFUNC
int process_func(char *input)
#else
int processfunc(char *input)
#endif
{
    if (is_mode("input")) {
        lputs("Content-Type: application/octet-stream\n\n");
        if (input == NULL)
            return lputs("NULL") < 0;
        lprintf("len=%zu:", linput_length());
        return lwrite(input, linput_length()) < 0;
    }
    if (is_mode("lputs")) {
        lputs("Content-Type: text/plain\n\n");
        lputs("a");
        lputs("b");
        return 0;
    }
    if (is_mode("lprintf")) {
        lputs("Content-Type: text/plain\n\n");
        int n = lprintf("%d|%s|%.3f|%c|%ld|%u|%x|%.2e|%g|%5s|%-3d|%.1f|%lld\n", -7, "str", 3.14159, 'z',
                        1234567890123L, 4000000000u, 255, 12345.678, 0.5, "ab", 9, 2.25, 9007199254740993LL);
        lprintf("returned=%d\n", n);
        return 0;
    }
    if (is_mode("big")) {
        static char chunk[65536];
        long total = param("n", 1 << 20), sent = 0;
        int flush = param("flush", 0) != 0;
        lprintf("Content-Type: application/octet-stream\nX-Pid: %ld\n\n", (long)getpid());
        while (sent < total) {
            long n = total - sent < (long)sizeof chunk ? total - sent : (long)sizeof chunk;
            for (long i = 0; i < n; i++)
                chunk[i] = (char)('a' + (sent + i) % 26);
            if (lwrite(chunk, (size_t)n) != n)
                return 1;
            if (flush && lflush() != 0)
                return 1;
            sent += n;
        }
        return 0;
    }
    if (is_mode("status")) {
        lputs("Status: 418 I'm a teapot\r\nContent-Type: text/plain\r\n\r\nteapot");
        return 0;
    }
    if (is_mode("notfound")) {
        lputs("Status: 404 Not Found\nContent-Type: text/plain\n\nnothing here");
        return 0;
    }
    if (is_mode("cookies")) {
        lputs("Content-Type: text/plain\nSet-Cookie: a=1; Path=/\nSet-Cookie: b=2; Path=/\nX-Custom: yes\n\ncookies");
        return 0;
    }
    if (is_mode("redirect-local")) {
        lputs("Location: /libcgi-bin/t.so?mode=method\n\nthis body is discarded");
        return 0;
    }
    if (is_mode("redirect-abs")) {
        lputs("Location: http://example.invalid/elsewhere\n\n");
        return 0;
    }
    if (is_mode("malformed")) {
        lputs("Content-Type text/plain\n\nBODY-AFTER-BAD-HEADER");
        return 0;
    }
    if (is_mode("noblank")) {
        lputs("Content-Type: text/plain\n");
        return 0;
    }
    if (is_mode("nothing")) {
        return 0;
    }
    if (is_mode("fail")) {
        lputs("Content-Type: text/plain\n\nPARTIAL-OUTPUT");
        return 3;
    }
    if (is_mode("method")) {
        lprintf("Content-Type: text/plain\n\n%s %s", env_or("REQUEST_METHOD"), env_or("QUERY_STRING"));
        return 0;
    }
    if (is_mode("pathinfo")) {
        lprintf("Content-Type: text/plain\n\nPATH_INFO=%s SCRIPT_NAME=%s", env_or("PATH_INFO"), env_or("SCRIPT_NAME"));
        return 0;
    }
    if (is_mode("setenv")) {
        static char put[] = "PUT_BY_SCRIPT=p";
        setenv("LEAKED", "yes", 1);
        putenv(put);
        setenv("HTTP_COOKIE", "overwritten", 1);
        unsetenv("QUERY_STRING");
        /* A name that is a prefix of a variable, one that extends it, and
         * one that differs in its last byte: none of them is that variable. */
        lprintf("Content-Type: text/plain\n\nLEAKED=%s PUT=%s COOKIE=%s QS=%s NEAR=%s%s%s", env_or("LEAKED"),
                env_or("PUT_BY_SCRIPT"), env_or("HTTP_COOKIE"), env_or("QUERY_STRING"), env_or("HTTP_COOKI"),
                env_or("HTTP_COOKIEX"), env_or("HTTP_COOKIF"));
        return 0;
    }
    if (is_mode("check")) {
        lprintf("Content-Type: text/plain\n\nLEAKED=%s PUT=%s COOKIE=%s X=%s", env_or("LEAKED"),
                env_or("PUT_BY_SCRIPT"), env_or("HTTP_COOKIE"), env_or("HTTP_X_TOKEN"));
        return 0;
    }
    if (is_mode("getenvptr")) {
        const char *v = getenv_ptr("QUERY_STRING");
        lprintf("Content-Type: text/plain\n\nvia pointer: %s", v ? v : "(null)");
        return 0;
    }
    if (is_mode("echo")) {
        /* Reads its variables twice with a pause between: another request
         * running meanwhile must not change what this one sees. */
        char qs[256], tok[256];
        snprintf(qs, sizeof qs, "%s", env_or("QUERY_STRING"));
        snprintf(tok, sizeof tok, "%s", env_or("HTTP_X_TOKEN"));
        usleep(2000);
        lprintf("Content-Type: text/plain\n\n%s|%s|%s|%s", qs, tok, env_or("QUERY_STRING"), env_or("HTTP_X_TOKEN"));
        return 0;
    }
    if (is_mode("version")) {
        lprintf("Content-Type: text/plain\n\n%s init=%d pid=%ld", VERSION, init_count, (long)getpid());
        return 0;
    }
    if (is_mode("remote")) {
        lprintf("Content-Type: text/plain\n\nhost=%s REMOTE_HOST=%s REMOTE_ADDR=%s", get_remote_host(),
                env_or("REMOTE_HOST"), env_or("REMOTE_ADDR"));
        return 0;
    }
    if (is_mode("random")) {
        lprintf("Content-Type: text/plain\n\nrandom=%ld", random());
        return 0;
    }
    if (is_mode("overlap")) {
        /* Counts how many calls of this script run at once in this process. */
        int now = __sync_add_and_fetch(&in_flight, 1);
        int m;
        while ((m = max_in_flight) < now && !__sync_bool_compare_and_swap(&max_in_flight, m, now))
            ;
        usleep((useconds_t)param("ms", 50) * 1000);
        __sync_sub_and_fetch(&in_flight, 1);
        lprintf("Content-Type: text/plain\n\nmax=%d", max_in_flight);
        return 0;
    }
    lprintf("Content-Type: text/plain\n\nhello %s", VERSION);
    return 0;
}
