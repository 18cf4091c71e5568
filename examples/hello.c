/* hello.c - the smallest LibCGI script.
 *   cc -shared -fPIC -I include -o hello.so examples/hello.c */
#include "libcgi.h"

int processfunc(char *input)
{
    (void)input;
    lputs("Content-Type: text/plain\r\n\r\n");
    lputs("Hello from mod_libcgi\n");
    return 0;
}
