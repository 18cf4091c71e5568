/* lprintf for libcgi-run: formats, then writes through lwrite (main.rs), as
 * mod_libcgi's lprintf does.  C because it is variadic. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int lwrite(const void *buf, size_t len);

int lprintf(const char *fmt, ...)
{
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof small)
        return lwrite(small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int r = lwrite(big, (size_t)n);
    free(big);
    return r;
}
