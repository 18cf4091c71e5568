/*
 * Calls the module's callbacks with the arguments the fault-injection build
 * (cargo feature `fault-injection`) panics on, for tests/panics.rs:
 *   ?getenv   getenv("LIBCGI_PANIC") before any output
 *   ?lwrite   a header block and part of the body, flushed, then
 *             lwrite("LIBCGI_PANIC")
 * Anything else: "ok pid=N".  Whatever follows a panicking call must never
 * run: the script's call ends there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "libcgi.h"

int processfunc(char *input)
{
    const char *q = getenv("QUERY_STRING");
    (void)input;
    if (q && strcmp(q, "getenv") == 0) {
        getenv("LIBCGI_PANIC");
        lprintf("Content-Type: text/plain\r\n\r\nafter the panic\n");
        return 0;
    }
    lprintf("Content-Type: text/plain\r\n\r\n");
    if (q && strcmp(q, "lwrite") == 0) {
        lprintf("part\n");
        lflush();
        lwrite("LIBCGI_PANIC", 12);
        lprintf("after the panic\n");
        return 0;
    }
    lprintf("ok pid=%ld", (long)getpid());
    return 0;
}
