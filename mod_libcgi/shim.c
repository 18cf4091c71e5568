/*
 * The parts of mod_libcgi that must be C.
 *
 * lprintf is variadic, and defining a variadic function is not stable Rust.
 * The exported symbol `lprintf` is a Rust naked trampoline that jumps here
 * with the caller's registers untouched (including %al, the vector-register
 * count of the x86-64 varargs convention), so doubles and any number of
 * arguments arrive exactly as the script passed them.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Exported by the Rust side. */
extern int lwrite(const void *buf, size_t len);

int libcgi_lprintf_impl(const char *fmt, ...)
{
    /* Most lprintf calls format a line or two: format on the stack and only
     * go to the heap when the result does not fit. */
    char small[1024];
    va_list ap, again;
    int n, rc;

    if (fmt == NULL)
        return -1;
    va_start(ap, fmt);
    va_copy(again, ap);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(again);
        return -1;
    }
    if ((size_t)n < sizeof small) {
        va_end(again);
        rc = lwrite(small, (size_t)n);
    }
    else {
        char *big = malloc((size_t)n + 1);
        if (big == NULL) {
            va_end(again);
            return -1;
        }
        vsnprintf(big, (size_t)n + 1, fmt, again);
        va_end(again);
        rc = lwrite(big, (size_t)n);
        free(big);
    }
    return rc < 0 ? -1 : n;
}
