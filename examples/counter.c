/* counter.c - state set up once in initfunc survives across requests served
 * by the same server process (each process has its own copy). */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "libcgi.h"

static unsigned long hits;
static time_t loaded_at;

int initfunc(void)
{
    hits = 0;
    loaded_at = time(NULL);
    return 0;
}

void terminatefunc(void)
{
    /* Release resources here (close files, flush caches...). */
}

int processfunc(char *input)
{
    (void)input;
    hits++;
    lprintf("Content-Type: text/plain\n\n"
            "process %ld has served this script %lu time(s) since %ld\n",
            (long)getpid(), hits, (long)loaded_at);
    return 0;
}
