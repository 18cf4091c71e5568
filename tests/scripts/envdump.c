/*
 * Prints every variable of a fixed, broad list that getenv() finds, one per
 * line.  Built both as a LibCGI script and (with cgi_main.c) as a classic CGI
 * program; with -DCGI_MAIN it also prints the names in its real environ that
 * are not in the list, so a test notices any variable the list misses.
 */
#include <stdlib.h>
#include <string.h>
#include "libcgi.h"

static const char *const names[] = {
    "GATEWAY_INTERFACE", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "SERVER_NAME", "SERVER_ADDR",
    "SERVER_PORT", "SERVER_ADMIN", "SERVER_SIGNATURE", "REQUEST_METHOD", "REQUEST_URI",
    "REQUEST_SCHEME", "SCRIPT_NAME", "SCRIPT_FILENAME", "SCRIPT_URI", "SCRIPT_URL",
    "PATH_INFO", "PATH_TRANSLATED", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
    "REMOTE_ADDR", "REMOTE_PORT", "REMOTE_HOST", "REMOTE_USER", "REMOTE_IDENT", "AUTH_TYPE",
    "DOCUMENT_ROOT", "CONTEXT_PREFIX", "CONTEXT_DOCUMENT_ROOT", "PATH", "LD_LIBRARY_PATH",
    "HTTPS", "UNIQUE_ID", "REDIRECT_STATUS", "REDIRECT_URL", "REDIRECT_QUERY_STRING",
    "HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_COOKIE", "HTTP_CONNECTION",
    "HTTP_X_TOKEN", "HTTP_X_WEIRD_NAME", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE",
    "HTTP_PROXY", "HTTP_AUTHORIZATION", "HTTP_TRANSFER_ENCODING",
    "FROM_SETENV", "FROM_PASSENV", "TZ", NULL,
};

int processfunc(char *input)
{
    (void)input;
    lputs("Content-Type: text/plain\n\n");
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        if (v)
            lprintf("%s=%s\n", names[i], v);
    }
#ifdef CGI_MAIN
    extern char **environ;
    for (char **e = environ; *e; e++) {
        size_t n = strcspn(*e, "=");
        int known = 0;
        for (int i = 0; names[i]; i++)
            if (strlen(names[i]) == n && strncmp(names[i], *e, n) == 0)
                known = 1;
        if (!known)
            lprintf("UNLISTED %.*s\n", (int)n, *e);
    }
#endif
    return 0;
}
