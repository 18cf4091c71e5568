/*
 * tests/http_edge.rs: reports the length and FNV-1a 64 hash of the body it
 * was handed, and whether the byte after it is the promised NUL.
 */
#include <stdint.h>
#include "libcgi.h"

int processfunc(char *input)
{
    size_t len = linput_length();
    uint64_t h = 0xcbf29ce484222325ull;
    if (input == NULL)
        return lputs("Content-Type: text/plain\n\nNULL") < 0;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)input[i];
        h *= 0x100000001b3ull;
    }
    lprintf("Content-Type: text/plain\n\nlen=%zu fnv=%016llx nul=%d", len, (unsigned long long)h, input[len] == 0);
    return 0;
}
