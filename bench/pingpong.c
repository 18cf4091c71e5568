/* The transport's floor: a round trip between two processes, the way an
 * isolated mod_libcgi call crosses (issue 12): a futex word in shared
 * memory, woken and waited on by both sides (shared, not FUTEX_PRIVATE, as
 * in mod_libcgi/isolation/transport.rs), and for comparison an eventfd pair
 * and a pipe pair; `spin` is the futex with up to SPIN polls of the word
 * before each wait (what a spin-then-sleep transport would gain or lose).  Both processes pinned to one CPU (as bench/run.sh pins
 * the server and everything it starts) or to two.
 *
 * Usage: pingpong <futex|spin|eventfd|pipe> <cpuA> <cpuB> <round trips> <samples>
 * Prints one JSON object: the microseconds per round trip of each sample.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
}

static void fwait(atomic_uint *w, unsigned v)
{
    syscall(SYS_futex, w, FUTEX_WAIT, v, NULL, NULL, 0);
}

static void fwake(atomic_uint *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Whose turn: 0 the client (A), 1 the server (B).  Each side hands the turn
 * over with a store and a wake, then sleeps until it comes back. */
#define SPIN 20000
static int spin;

static void await_turn(atomic_uint *w, unsigned mine)
{
    for (int k = 0; spin && k < SPIN && atomic_load(w) != mine; k++)
        __builtin_ia32_pause();
    while (atomic_load(w) != mine)
        fwait(w, !mine);
}

static void futex_side(atomic_uint *w, unsigned mine, long n)
{
    for (long i = 0; i < n; i++) {
        await_turn(w, mine);
        atomic_store(w, !mine);
        fwake(w);
    }
}

static void fd_side(int rd, int wr, int eventfd_, int first, long n)
{
    uint64_t v = 1;
    char c = 'x';
    for (long i = 0; i < n; i++) {
        if (!first) {
            if (eventfd_ ? read(rd, &v, 8) != 8 : read(rd, &c, 1) != 1)
                exit(3);
        }
        if (eventfd_ ? write(wr, &v, 8) != 8 : write(wr, &c, 1) != 1)
            exit(3);
        if (first) {
            if (eventfd_ ? read(rd, &v, 8) != 8 : read(rd, &c, 1) != 1)
                exit(3);
        }
    }
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s futex|spin|eventfd|pipe cpuA cpuB round-trips samples\n", argv[0]);
        return 2;
    }
    const char *how = argv[1];
    int ca = atoi(argv[2]), cb = atoi(argv[3]);
    long n = atol(argv[4]), samples = atol(argv[5]);
    spin = strcmp(how, "spin") == 0;
    int fut = spin || strcmp(how, "futex") == 0, efd = strcmp(how, "eventfd") == 0;
    if (!fut && !efd && strcmp(how, "pipe") != 0)
        return 2;
    atomic_uint *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED)
        return 2;
    int ab[2], ba[2];
    if (efd) {
        ab[0] = ab[1] = eventfd(0, 0);
        ba[0] = ba[1] = eventfd(0, 0);
    } else if (!fut && (pipe(ab) || pipe(ba))) {
        return 2;
    }
    printf("{\"how\": \"%s\", \"cpus\": [%d, %d], \"round_trips\": %ld, \"us\": [", how, ca, cb, n);
    fflush(stdout);
    for (long s = 0; s < samples; s++) {
        atomic_store(w, 0);
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            pin(cb);
            /* Answers until it is killed. */
            if (fut)
                futex_side(w, 1, LONG_MAX);
            else
                fd_side(ab[0], ba[1], efd, 0, LONG_MAX);
            _exit(0);
        }
        pin(ca);
        /* A few round trips first: both sides running, caches warm. */
        long warm = n / 10 + 1;
        double t0 = 0;
        for (long i = 0; i < n + warm; i++) {
            if (i == warm)
                t0 = now_us();
            if (fut) {
                await_turn(w, 0);
                atomic_store(w, 1);
                fwake(w);
            } else {
                fd_side(ba[0], ab[1], efd, 1, 1);
            }
        }
        if (fut)
            await_turn(w, 0);
        double us = (now_us() - t0) / n;
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
        printf("%s%.3f", s ? ", " : "", us);
        fflush(stdout);
    }
    printf("]}\n");
    return 0;
}
