/*
 * The chaos soak's good script: every byte of its output is predictable from
 * the request, so the harness checks each response byte for byte.
 *
 * GET  ?n=N&seed=S  ->  "seed=S v=V\n" then N bytes of the version's pattern
 * POST ?seed=S      ->  "seed=S v=V\n" then the request body, echoed
 *
 * Byte i of the pattern is (i % 251) ^ (0x11 * V): two versions differ in
 * every byte, and a lost or repeated piece of the stream shifts the period
 * (251 is prime, the writes are 8 KiB), so a mixed or spliced body never
 * matches.  Built with -DVERSION=1 and -DVERSION=2 for the atomic-rename
 * swap.  X-Version and X-Pid say which version and which server process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "libcgi.h"

#ifndef VERSION
#define VERSION 0
#endif

int libcgi_thread_safe = 1;

static unsigned char pattern[251 * 64];

int initfunc(void)
{
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)((i % 251) ^ (0x11 * VERSION));
    return 0;
}

static const char *param(const char *q, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    out[0] = 0;
    for (const char *p = q; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            size_t i = 0;
            for (p += n + 1; *p && *p != '&' && i + 1 < cap; p++)
                out[i++] = *p;
            out[i] = 0;
            return out;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return out;
}

int processfunc(char *input)
{
    const char *q = getenv("QUERY_STRING");
    char seed[32], nbuf[32];
    param(q, "seed", seed, sizeof seed);
    param(q, "n", nbuf, sizeof nbuf);
    size_t n = (size_t)strtoul(nbuf, NULL, 10);
    if (lprintf("Content-Type: application/octet-stream\r\nX-Version: %d\r\nX-Pid: %ld\r\n\r\nseed=%s v=%d\n",
                VERSION, (long)getpid(), seed, VERSION) < 0)
        return 0;
    if (input) {
        size_t len = linput_length();
        for (size_t off = 0; off < len;) {
            size_t k = len - off < 8192 ? len - off : 8192;
            if (lwrite(input + off, k) < 0)
                return 0; /* the client went away: not the script's failure */
            off += k;
        }
        return 0;
    }
    /* Streamed in 8 KiB writes starting at the right phase of the period. */
    for (size_t off = 0; off < n;) {
        size_t k = n - off < 8192 ? n - off : 8192;
        if (lwrite(pattern + off % 251, k) < 0)
            return 0;
        off += k;
    }
    return 0;
}
