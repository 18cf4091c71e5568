/* env.c - dumps the CGI variables a script sees through plain getenv(). */
#include <stdlib.h>
#include "libcgi.h"

static const char *const names[] = {
    "GATEWAY_INTERFACE", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "SERVER_NAME",
    "SERVER_ADDR", "SERVER_PORT", "REQUEST_METHOD", "REQUEST_URI",
    "SCRIPT_NAME", "SCRIPT_FILENAME", "PATH_INFO", "PATH_TRANSLATED",
    "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_ADDR",
    "REMOTE_PORT", "REMOTE_HOST", "HTTP_HOST", "HTTP_USER_AGENT",
    "HTTP_ACCEPT", "HTTP_COOKIE", "HTTPS", NULL,
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
    return 0;
}
