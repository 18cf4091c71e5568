/*
 * tests/http_edge.rs: a script whose CGI output is chosen by the client, so
 * that the same program, under mod_cgid and under mod_libcgi, can be fed any
 * header block.
 *
 *   POST body B, ?split=S : writes B as its output, in lwrite calls of S
 *                           bytes (0: one call); ?at=K: two calls, split at K
 *   GET ?v=etag|lm|both|none|status : a small response with an ETag, a
 *                           Last-Modified, both, neither, or an explicit
 *                           Status besides both (for conditional requests),
 *                           written as ?split= / ?at= say
 *   GET ?v=sec         : the n of every SEC_n variable set (tests/http_edge.rs)
 *   -DMARK_FILE="p"         initfunc/terminatefunc append a line to file p
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "libcgi.h"

static void mark(const char *what)
{
#ifdef MARK_FILE
    char line[64];
    int fd = open(MARK_FILE, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {
        int n = snprintf(line, sizeof line, "%s %ld\n", what, (long)getpid());
        if (write(fd, line, (size_t)n) < 0) { /* nothing to do */ }
        close(fd);
    }
#else
    (void)what;
#endif
}

int initfunc(void)
{
    mark("init");
    return 0;
}

void terminatefunc(void)
{
    mark("term");
}

static long param(const char *name, long dflt)
{
    const char *q = getenv("QUERY_STRING");
    size_t n = strlen(name);
    for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == '=')
            return atol(p + n + 1);
    return dflt;
}

static int has(const char *v)
{
    const char *q = getenv("QUERY_STRING");
    char want[32];
    snprintf(want, sizeof want, "v=%s", v);
    return q && strstr(q, want) != NULL;
}

#define ETAG "ETag: \"abc\"\n"
#define LASTMOD "Last-Modified: Sat, 01 Jan 2000 00:00:00 GMT\n"

int processfunc(char *input)
{
    if (input == NULL && has("sec")) {
        /* Which of the test's sections (SetEnv SEC_n) Apache applied. */
        lputs("Content-Type: text/plain\n\n");
        for (int i = 0; i < 16; i++) {
            char n[16];
            snprintf(n, sizeof n, "SEC_%d", i);
            if (getenv(n))
                lprintf("%d\n", i);
        }
        return 0;
    }
    static char out[512];
    size_t len;
    if (input == NULL) {
        const char *h = has("etag") ? ETAG : has("lm") ? LASTMOD : has("both") ? ETAG LASTMOD
                      : has("status") ? "Status: 200 OK\n" ETAG LASTMOD : "";
        len = (size_t)snprintf(out, sizeof out, "Content-Type: text/plain\nSet-Cookie: c=1\nX-Script: yes\n%s\n0123456789", h);
        input = out;
    } else {
        len = linput_length();
    }
    long split = param("split", 0), at = param("at", -1);
    /* The script ignores what lwrite says: both servers must see the same
     * output, whatever they make of it. */
    if (at >= 0 && (size_t)at <= len) {
        lwrite(input, (size_t)at);
        lwrite(input + at, len - (size_t)at);
    } else if (split <= 0) {
        lwrite(input, len);
    } else {
        for (size_t off = 0; off < len; off += (size_t)split)
            lwrite(input + off, len - off < (size_t)split ? len - off : (size_t)split);
    }
    return 0;
}
