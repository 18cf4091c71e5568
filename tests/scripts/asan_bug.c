/* A heap overflow that runs fine without a sanitizer: tests/rust_sdk.rs
 * builds it with -fsanitize=address and runs it under libcgi-run to show
 * that AddressSanitizer finds it there. */
#include <stdlib.h>
#include "libcgi.h"

int processfunc(char *input)
{
    (void)input;
    char *volatile p = malloc(8);
    lputs("Content-Type: text/plain\n\n");
    p[8] = 'x';
    free(p);
    lputs("done\n");
    return 0;
}
