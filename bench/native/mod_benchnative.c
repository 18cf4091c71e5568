/*
 * The in-process ceiling: a hand-written Apache handler that writes the same
 * bytes from memory.  Mapped to files like the other peers (AddHandler
 * bench-native .nat), so it pays the same stat per request; the size is the
 * number in the file's name (n1024.nat).
 *
 * bench-native-hdr (files *.nhd) is the same module as a CGI-style program
 * would be written: the response starts as a CGI header block, which Apache's
 * own parser (ap_scan_script_header_err_strs_ex, what mod_cgi and mod_libcgi
 * use) turns into the response headers.  The difference between the two
 * native handlers is what Apache's CGI header parsing costs by itself.
 *
 * Another handler, bench-mark, calls bench_mark() and answers an empty 200:
 * the callgrind measurement runs with --dump-before=bench_mark, so each
 * request for the marker ends one counted segment and starts the next.
 */
#include <stdlib.h>
#include <string.h>
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "http_log.h"
#include "util_script.h"

APLOG_USE_MODULE(benchnative);

static char body[102400];

/* Not static, never inlined: callgrind must see it called. */
__attribute__((noinline, used)) void bench_mark(void)
{
    __asm__ volatile("" ::: "memory");
}

static int bench_handler(request_rec *r)
{
    const char *base, *p;
    long size;

    if (!strcmp(r->handler, "bench-mark")) {
        bench_mark();
        ap_set_content_type(r, "text/plain");
        return OK;
    }
    int cgi = !strcmp(r->handler, "bench-native-hdr");
    if (!cgi && strcmp(r->handler, "bench-native"))
        return DECLINED;
    if (r->finfo.filetype != APR_REG)
        return HTTP_NOT_FOUND;
    base = strrchr(r->filename, '/');
    base = base ? base + 1 : r->filename;
    for (p = base; *p && (*p < '0' || *p > '9'); p++)
        ;
    size = atol(p);
    if (size < 0 || size > (long)sizeof body)
        return HTTP_NOT_FOUND;
    if (cgi) {
        char buf[MAX_STRING_LEN];
        const char *termch;
        int termarg;
        int st = ap_scan_script_header_err_strs_ex(r, buf, APLOG_MODULE_INDEX, &termch, &termarg,
                                                   "Content-Type: application/octet-stream\r\n\r\n", NULL);
        if (st != OK)
            return st;
    }
    else
        ap_set_content_type(r, "application/octet-stream");
    ap_rwrite(body, (int)size, r);
    return OK;
}

/* The body is made in each server process, as the LibCGI script's initfunc
 * and the FastCGI and CGI programs make theirs.  Filled once in the parent,
 * before the fork, it would be one copy in memory shared by every prefork
 * child, which stays in the CPU caches where 32 private copies do not: that
 * alone was worth 10-20% at 10-100 KiB under prefork. */
static void child_init(apr_pool_t *p, server_rec *s)
{
    (void)p;
    (void)s;
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('a' + i % 26);
}

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(bench_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA benchnative_module = {
    STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, register_hooks
};
