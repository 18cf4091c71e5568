/*
 * The benchmark's dynamic program: a Content-Type header and SIZE bytes from
 * memory.  One source, three builds:
 *   cc -shared -fPIC -DSIZE=28 peer.c            LibCGI script (lwrite)
 *   cc -DSIZE=28 -DFCGI_MAIN peer.c -lfcgi       FastCGI application (libfcgi)
 *   cc -DSIZE=28 -DCGI_MAIN peer.c               classic CGI program
 * FCGI_PORT=n makes the FastCGI build listen on 127.0.0.1:n itself (for
 * mod_proxy_fcgi) instead of on the socket mod_fcgid hands it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef SIZE
#define SIZE 28
#endif

static char body[SIZE];
static const char header[] = "Content-Type: application/octet-stream\r\n\r\n";

static void fill(void)
{
    for (int i = 0; i < SIZE; i++)
        body[i] = (char)('a' + i % 26);
}

#if defined(FCGI_MAIN)
#include <fcgiapp.h>
int main(void)
{
    FCGX_Request req;
    int sock = 0;
    const char *port = getenv("FCGI_PORT");
    fill();
    FCGX_Init();
    if (port) {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%s", port);
        sock = FCGX_OpenSocket(addr, 128);
        /* A few processes share the socket, like a small spawn-fcgi pool. */
        for (int i = 0; i < 3; i++)
            if (fork() == 0)
                break;
    }
    FCGX_InitRequest(&req, sock, 0);
    while (FCGX_Accept_r(&req) >= 0) {
        FCGX_PutStr(header, sizeof header - 1, req.out);
        FCGX_PutStr(body, SIZE, req.out);
        FCGX_Finish_r(&req);
    }
    return 0;
}
#elif defined(CGI_MAIN)
int main(void)
{
    fill();
    fwrite(header, 1, sizeof header - 1, stdout);
    fwrite(body, 1, SIZE, stdout);
    return 0;
}
#else
#include "libcgi.h"
int initfunc(void)
{
    fill();
    return 0;
}
int processfunc(char *input)
{
    (void)input;
    lwrite(header, sizeof header - 1);
    return lwrite(body, SIZE) == SIZE ? 0 : 1;
}
#endif
