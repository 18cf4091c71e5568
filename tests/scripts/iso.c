/* Probes for the isolated domain (tests/isolation.rs), by query string:
 *   mode=fds        the targets of every open descriptor, one a line
 *   mode=scan&r=X   "found" if the reverse of X is in this process's
 *                   anonymous memory (heap, stacks, anonymous mappings)
 *   mode=scribble   writes garbage over this process's heap, then returns
 *   mode=envlib     getenv through a function pointer libc hands out
 *   mode=sleep&f=P  writes its pid to the file P, then sleeps 20 s
 *   mode=id         uid, gid and the address-space, CPU and open-file limits
 *   mode=shm        bytes of shared anonymous memory mapped (/dev/zero)
 *   mode=envsum     per HTTP_X_BIG* variable: "NAME len sum" (sum of its
 *                   bytes), one a line, and the number of variables
 *   mode=stderr[&tag=T][&nonl=1]  writes "iso stderr from <pid>[ T]" and a
 *                   newline (none with nonl) to its stderr, in one write
 *   mode=long&sync=P&n=N&len=L&fill=C  appends its pid to the file P, spins
 *                   (up to 5 s) until P names two processes, then writes N
 *                   lines "iso long <pid> <k> " and L times C to its stderr,
 *                   each line in one write; answers "pid=<pid>"
 *   mode=epipe      writes to a pipe whose read end it closed: "EPIPE" if
 *                   the write failed so (it did not end the process)
 *   otherwise       "iso pid=<pid>"
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <libcgi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dlfcn.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>

static const char *arg(const char *name)
{
    const char *q = getenv("QUERY_STRING");
    size_t n = strlen(name);
    for (const char *p = q; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=')
            return p + n + 1;
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return NULL;
}

/* Whether the reverse of rev[0..n) is at p: compared byte by byte, so the
 * secret itself is never built in this process's memory. */
static int match_reversed(const char *p, const char *rev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != rev[n - 1 - i])
            return 0;
    return 1;
}

static int scan(const char *rev, size_t n)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[5];
        int off = 0;
        if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", &lo, &hi, perms, &off) < 3 || perms[0] != 'r')
            continue;
        const char *path = line + off;
        /* Anonymous memory only (file mappings may end before their last
         * page), and not the kernel's pages. */
        if (*path != 0 && *path != '\n' && strncmp(path, "[heap]", 6) != 0 && strncmp(path, "[stack", 6) != 0)
            continue;
        const char *p = (const char *)lo, *end = (const char *)hi - n;
        while (!found && p <= end && (p = memchr(p, rev[n - 1], (size_t)(end - p) + 1))) {
            found = match_reversed(p, rev, n);
            p++;
        }
    }
    if (f)
        fclose(f);
    return found;
}

int processfunc(char *input)
{
    (void)input;
    const char *mode = arg("mode");
    lputs("Content-Type: text/plain\n\n");
    if (mode && strcmp(mode, "fds") == 0) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
                continue;
            char p[64], t[512];
            snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(p, t, sizeof t - 1);
            t[n < 0 ? 0 : n] = 0;
            lprintf("%s %s\n", e->d_name, t);
        }
        if (d)
            closedir(d);
        return 0;
    }
    if (mode && strncmp(mode, "scan", 4) == 0) {
        const char *r = arg("r");
        size_t n = r ? strcspn(r, "&") : 0;
        lputs(n > 0 && scan(r, n) ? "found" : "absent");
        return 0;
    }
    if (mode && strcmp(mode, "scribble") == 0) {
        char *p = malloc(64);
        /* Far past its block, over whatever else lives on the heap. */
        memset(p, 0x5a, 64 * 1024);
        lputs("scribbled");
        return 0;
    }
    if (mode && strcmp(mode, "envlib") == 0) {
        char *(*g)(const char *) = (char *(*)(const char *))dlsym(RTLD_DEFAULT, "getenv");
        lprintf("QUERY_STRING=%s", g ? g("QUERY_STRING") : "(no getenv)");
        return 0;
    }
    if (mode && strncmp(mode, "sleep&", 6) == 0) {
        const char *f = arg("f");
        char path[256];
        snprintf(path, sizeof path, "%.*s", (int)(f ? strcspn(f, "&") : 0), f ? f : "");
        FILE *o = fopen(path, "w");
        if (o) {
            fprintf(o, "%ld", (long)getpid());
            fclose(o);
        }
        sleep(20);
        return 0;
    }
    if (mode && strncmp(mode, "stderr", 6) == 0 && (mode[6] == 0 || mode[6] == '&')) {
        const char *t = arg("tag");
        char line[128];
        int n = snprintf(line, sizeof line, "iso stderr from %d%s%.*s%s", (int)getpid(), t ? " " : "",
                         (int)(t ? strcspn(t, "&") : 0), t ? t : "", arg("nonl") ? "" : "\n");
        if (n >= (int)sizeof line)
            n = (int)sizeof line - 1;
        if (write(2, line, (size_t)n) != n)
            return 1;
        lprintf("pid=%d", (int)getpid());
        return 0;
    }
    if (mode && strncmp(mode, "long&", 5) == 0) {
        const char *f = arg("sync"), *c = arg("fill");
        int lines = arg("n") ? atoi(arg("n")) : 1, len = arg("len") ? atoi(arg("len")) : 0;
        char path[256];
        snprintf(path, sizeof path, "%.*s", (int)(f ? strcspn(f, "&") : 0), f ? f : "");
        FILE *o = fopen(path, "a");
        if (o) {
            fprintf(o, "%ld\n", (long)getpid());
            fclose(o);
        }
        /* Both writers at once, or the test proves nothing: a spin (not a
         * sleep), so that they start within microseconds of each other. */
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (t = t0; t.tv_sec - t0.tv_sec < 5; clock_gettime(CLOCK_MONOTONIC, &t)) {
            FILE *in = fopen(path, "r");
            int seen = 0, ch;
            while (in && (ch = fgetc(in)) != EOF)
                seen += ch == '\n';
            if (in)
                fclose(in);
            if (seen >= 2)
                break;
            sched_yield();
        }
        char *line = malloc((size_t)len + 64);
        for (int k = 0; line && k < lines; k++) {
            int n = sprintf(line, "iso long %d %d ", (int)getpid(), k);
            memset(line + n, c ? *c : 'x', (size_t)len);
            line[n + len] = '\n';
            if (write(2, line, (size_t)n + (size_t)len + 1) != n + len + 1)
                return 1;
        }
        free(line);
        lprintf("pid=%d", (int)getpid());
        return 0;
    }
    if (mode && strcmp(mode, "epipe") == 0) {
        int p[2];
        if (pipe(p) != 0)
            return 1;
        close(p[0]);
        ssize_t n = write(p[1], "x", 1);
        int e = errno;
        close(p[1]);
        lputs(n < 0 && e == EPIPE ? "EPIPE" : "no EPIPE");
        return 0;
    }
    if (mode && strcmp(mode, "shm") == 0) {
        FILE *f = fopen("/proc/self/maps", "r");
        char line[512];
        unsigned long total = 0;
        while (f && fgets(line, sizeof line, f)) {
            unsigned long lo, hi;
            char perms[5];
            if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && perms[3] == 's' && strstr(line, "/dev/zero"))
                total += hi - lo;
        }
        if (f)
            fclose(f);
        lprintf("shm=%lu", total);
        return 0;
    }
    if (mode && strncmp(mode, "envsum", 6) == 0) {
        int n = 0;
        for (char **e = environ; *e; e++, n++) {
            if (strncmp(*e, "HTTP_X_BIG", 10) != 0)
                continue;
            const char *v = strchr(*e, '=') + 1;
            unsigned long sum = 0;
            for (const char *p = v; *p; p++)
                sum += (unsigned char)*p;
            lprintf("%.*s %zu %lu\n", (int)(v - 1 - *e), *e, strlen(v), sum);
        }
        lprintf("vars %d", n);
        return 0;
    }
    if (mode && strcmp(mode, "id") == 0) {
        struct rlimit as, cpu, nofile;
        getrlimit(RLIMIT_AS, &as);
        getrlimit(RLIMIT_CPU, &cpu);
        getrlimit(RLIMIT_NOFILE, &nofile);
        lprintf("uid=%d gid=%d as=%lld cpu=%lld nofile=%lld", (int)getuid(), (int)getgid(), (long long)as.rlim_cur,
                (long long)cpu.rlim_cur, (long long)nofile.rlim_cur);
        return 0;
    }
    lprintf("iso pid=%ld", (long)getpid());
    return 0;
}
