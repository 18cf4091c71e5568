/*
 * Turns a LibCGI script into a classic CGI program: the same processfunc,
 * with lwrite & co. over stdout and the body read from stdin.  Used to
 * compare what mod_libcgi and mod_cgid give the same program.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libcgi.h"

static size_t input_len;

int lwrite(const void *buf, size_t len) { return fwrite(buf, 1, len, stdout) == len ? (int)len : -1; }
int lputs(const char *s) { return fputs(s, stdout) < 0 ? -1 : 0; }
int lflush(void) { return fflush(stdout) == 0 ? 0 : -1; }
size_t linput_length(void) { return input_len; }
const char *get_remote_host(void)
{
    const char *h = getenv("REMOTE_HOST");
    return h ? h : getenv("REMOTE_ADDR");
}
int lprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int main(void)
{
    const char *cl = getenv("CONTENT_LENGTH");
    char *input = NULL;
    if (cl && atol(cl) > 0) {
        input_len = (size_t)atol(cl);
        input = malloc(input_len + 1);
        input_len = fread(input, 1, input_len, stdin);
        input[input_len] = 0;
    }
    int rc = processfunc(input);
    fflush(stdout);
    return rc;
}
