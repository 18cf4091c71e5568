/*
 * The in-process ceiling: a hand-written Apache handler that writes the same
 * bytes from memory.  Mapped to files like the other peers (AddHandler
 * bench-native .nat), so it pays the same stat per request; the size is the
 * number in the file's name (n1024.nat).
 *
 * A second handler, bench-mark, calls bench_mark() and answers an empty 200:
 * the callgrind measurement runs with --dump-before=bench_mark, so each
 * request for the marker ends one counted segment and starts the next.
 */
#include <stdlib.h>
#include <string.h>
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"

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
    if (strcmp(r->handler, "bench-native"))
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
    ap_set_content_type(r, "application/octet-stream");
    ap_rwrite(body, (int)size, r);
    return OK;
}

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('a' + i % 26);
    ap_hook_handler(bench_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA benchnative_module = {
    STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, register_hooks
};
