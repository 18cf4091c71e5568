/*
 * The parts of mod_libcgi that must be C.
 *
 * 1. The guard around calls into scripts (sigsetjmp/siglongjmp), and the
 *    wrappers of every function a script calls back into.
 * 2. lprintf, which is variadic: defining a variadic function is not stable
 *    Rust.
 *
 * The exported names (lwrite, lprintf, ...) are Rust naked trampolines that
 * jump to the libcgi_c_* functions here with the caller's registers untouched
 * (including %al, the vector-register count of the x86-64 varargs
 * convention), so arguments arrive exactly as the script passed them: C
 * functions compiled by the cc crate are not exported from a Rust cdylib.
 */
/* pthread_getattr_np, MAP_STACK */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* ======================================================================
 * The guard around every call into a script.
 *
 * A script runs in the server's address space.  While a thread is inside a
 * script (initfunc, processfunc, terminatefunc), a fault signal raised on
 * that thread is turned into a return from libcgi_call() with the signal
 * recorded, by siglongjmp from the handler.  The jump goes straight from the
 * handler (or a script frame) to the sigsetjmp below: no Rust frame lies in
 * between, because every function a script can call back into is a C
 * wrapper here that only jumps after the Rust code it calls has returned.
 *
 * Faults while the thread is inside one of those callbacks are the server's
 * own: they go to the handler that was installed before ours (Apache's
 * sig_coredump), as do faults on threads that are not in a script.
 * ====================================================================== */
#include <errno.h>
#include <stdint.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { LIBCGI_RETURNED = 0, LIBCGI_FAULT = 1, LIBCGI_TIMEOUT = 2, LIBCGI_EXITED = 3 };
enum { CALL_INT_STR = 0, CALL_INT_VOID = 1, CALL_VOID_VOID = 2 };

struct libcgi_outcome {
    int kind;        /* LIBCGI_* */
    int rc;          /* what the function returned (int kinds) */
    int signo;       /* LIBCGI_FAULT */
    int si_code;
    void *addr;      /* faulting address, where the kernel says */
    int exit_status; /* LIBCGI_EXITED */
};

struct libcgi_guard {
    sigjmp_buf env;
    volatile sig_atomic_t armed;     /* inside a script call */
    volatile sig_atomic_t depth;     /* inside our callbacks (nesting count) */
    volatile sig_atomic_t timed_out; /* set by the watchdog before it signals */
    volatile sig_atomic_t pending;   /* timeout arrived inside a callback */
    struct libcgi_outcome out;
    void *watch;                     /* the Rust watchdog's entry for this thread */
};

/* Initial-exec TLS: static TLS that exists from thread creation, so the
 * signal handler never makes glibc allocate a dynamic TLS block (malloc in a
 * handler, possibly on a corrupted heap).  Only a pointer, to stay well
 * within the surplus glibc keeps for dlopened objects. */
static __thread struct libcgi_guard *thread_guard __attribute__((tls_model("initial-exec")));

/* The request this thread is running a script for (a Rust Request), read by
 * every callback.  Here rather than in a Rust thread_local!: in a shared
 * object Rust can only use the general-dynamic TLS model, a call into the
 * dynamic loader (__tls_get_addr) per access, and stable Rust cannot choose
 * another; initial-exec is one instruction. */
static __thread void *current_request __attribute__((tls_model("initial-exec")));

void *libcgi_current(void)
{
    return current_request;
}

/* Sets the thread's request and returns the one it replaces. */
void *libcgi_set_current(void *req)
{
    void *prev = current_request;
    current_request = req;
    return prev;
}
static struct sigaction previous[NSIG];
static int timer_signo;

static const int fault_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS };
#define NFAULTS (int)(sizeof fault_signals / sizeof fault_signals[0])
#define ALTSTACK_SIZE (128 * 1024)

static void chain(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = &previous[sig];
    /* From now on this signal is not ours: restore what was there, so a
     * second fault goes straight to it. */
    sigaction(sig, old, NULL);
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction)
            old->sa_sigaction(sig, si, uc);
        return;
    }
    if (old->sa_handler == SIG_IGN)
        return;
    if (old->sa_handler == SIG_DFL) {
        /* A real fault re-executes the faulting instruction on return and
         * gets the default action; a sent signal must be sent again. */
        if (si == NULL || si->si_code <= 0)
            raise(sig);
        return;
    }
    old->sa_handler(sig);
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    struct libcgi_guard *g = thread_guard;
    int saved_errno = errno;

    if (sig == timer_signo) {
        if (g && g->armed && g->timed_out) {
            if (g->depth > 0) {
                /* Inside our callback: jumping now could leave a lock of ours
                 * held.  The callback's wrapper jumps when it returns. */
                g->pending = 1;
                errno = saved_errno;
                return;
            }
            g->out.kind = LIBCGI_TIMEOUT;
            siglongjmp(g->env, 1);
        }
        errno = saved_errno;
        return; /* late timer for a call that already ended */
    }
    if (g && g->armed && g->depth == 0) {
        g->out.kind = LIBCGI_FAULT;
        g->out.signo = sig;
        g->out.si_code = si ? si->si_code : 0;
        g->out.addr = si ? si->si_addr : NULL;
        siglongjmp(g->env, 1);
    }
    errno = saved_errno;
    chain(sig, si, uc);
}

/* Installs the handlers in a server child process (child_init).  Returns 0,
 * or the errno of the failing sigaction. */
int libcgi_install_handlers(int timer_signal)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    /* SA_NODEFER: the handler runs with the thread's own signal mask, so a
     * jump out of it leaves the mask as it was, and libcgi_call need not save
     * and restore the mask (a sigprocmask syscall) on every call. */
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    timer_signo = timer_signal;
    for (int i = 0; i < NFAULTS; i++)
        if (sigaction(fault_signals[i], &sa, &previous[fault_signals[i]]) != 0)
            return errno;
    if (sigaction(timer_signo, &sa, &previous[timer_signo]) != 0)
        return errno;
    return 0;
}

/* Per-thread setup, once: an alternate signal stack (so that a script's
 * endless recursion can be caught on a thread whose own stack is exhausted)
 * and the signals unblocked (threaded MPMs block them in worker threads). */
__attribute__((noinline, cold)) static int thread_setup(void)
{
    if (thread_guard)
        return 0;
    struct libcgi_guard *g = calloc(1, sizeof *g);
    if (g == NULL)
        return ENOMEM;
    long page = sysconf(_SC_PAGESIZE);
    char *mem = mmap(NULL, ALTSTACK_SIZE + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
        free(g);
        return errno;
    }
    /* A guard page below the alternate stack turns its overflow into a crash
     * instead of silent corruption. */
    mprotect(mem, (size_t)page, PROT_NONE);
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = mem + page;
    ss.ss_size = ALTSTACK_SIZE;
    if (sigaltstack(&ss, NULL) != 0) {
        int e = errno;
        munmap(mem, ALTSTACK_SIZE + page);
        free(g);
        return e;
    }
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < NFAULTS; i++)
        sigaddset(&set, fault_signals[i]);
    sigaddset(&set, timer_signo);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    /* Server threads live as long as their process: the guard and the
     * alternate stack are never freed. */
    thread_guard = g;
    return 0;
}

/* This thread's guard, set up on first use; NULL if that failed. */
void *libcgi_thread_guard(void)
{
    if (__builtin_expect(thread_guard == NULL, 0) && thread_setup() != 0)
        return NULL;
    return thread_guard;
}

/* Where the Rust side keeps this thread's watchdog entry (in the guard, to
 * find it without a Rust thread-local: see current_request), the guard set
 * up on first use; NULL if that failed. */
void **libcgi_thread_watch(void)
{
    if (__builtin_expect(thread_guard == NULL, 0) && thread_setup() != 0)
        return NULL;
    return &thread_guard->watch;
}

/* Called by the watchdog thread, while it holds the call's deadline claimed
 * (so the call cannot be disarmed meanwhile), just before it signals the late
 * thread. */
void libcgi_guard_expire(void *guard)
{
    ((struct libcgi_guard *)guard)->timed_out = 1;
}

/* Called by a thread disarming a call the watchdog signalled, after which
 * the watchdog no longer touches the guard: the mark must not carry over to
 * the thread's next call. */
void libcgi_guard_reset(void *guard)
{
    ((struct libcgi_guard *)guard)->timed_out = 0;
}

/* After a script's endless recursion, the thread's stack is resident down to
 * its end: hand the pages below the current frame back to the kernel, so a
 * fault costs no memory (they are zero-filled again if ever touched). */
static void release_unused_stack(void)
{
    pthread_attr_t attr;
    void *low;
    size_t size;
    char here;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return;
    int rc = pthread_attr_getstack(&attr, &low, &size);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    /* Keep a generous margin below this frame for the calls still to come. */
    uintptr_t end = ((uintptr_t)&here - 256 * 1024) & ~(page - 1);
    uintptr_t start = ((uintptr_t)low + page - 1) & ~(page - 1);
    if (end > start)
        madvise((void *)start, end - start, MADV_DONTNEED);
}

/* Calls a script function under the guard.  Returns the outcome kind; the
 * details are copied to *out. */
int libcgi_call(void *fn, int how, char *arg, struct libcgi_outcome *out)
{
    if (__builtin_expect(thread_guard == NULL, 0)) {
        int e = thread_setup();
        if (e != 0) {
            out->kind = -e;
            return out->kind;
        }
    }
    /* volatile: read after the jump, so it must not live in a register. */
    struct libcgi_guard *volatile g = thread_guard;
    memset(&g->out, 0, sizeof g->out);
    g->depth = 0;
    g->pending = 0;
    /* timed_out is not cleared here: the watchdog may already have marked
     * this call (a deadline shorter than the way here).  A mark left from the
     * previous call was cleared when that call was disarmed. */
    if (sigsetjmp(g->env, 0) == 0) {
        g->armed = 1;
        switch (how) {
        case CALL_INT_STR:
            g->out.rc = ((int (*)(char *))fn)(arg);
            break;
        case CALL_INT_VOID:
            g->out.rc = ((int (*)(void))fn)();
            break;
        default:
            ((void (*)(void))fn)();
            break;
        }
        g->armed = 0;
        g->out.kind = LIBCGI_RETURNED;
    }
    else {
        /* Arrived here by siglongjmp (the mask is the thread's own: see
         * SA_NODEFER). */
        g->armed = 0;
        if (g->out.kind == LIBCGI_FAULT && g->out.signo == SIGSEGV)
            release_unused_stack();
    }
    /* timed_out is left to the disarm (libcgi_guard_reset): the watchdog may
     * still mark this call until then. */
    g->depth = 0;
    *out = g->out;
    return out->kind;
}

/* ---- Callback wrappers --------------------------------------------------
 * Every function a script calls into goes through enter()/leave(): while
 * depth > 0 a fault is the server's and a timeout waits. */

/* Time in callbacks, for mod_libcgi/metrics (the "callbacks" phase): the
 * outermost enter/leave read the clock (mod_libcgi/metrics/clock.rs: the
 * TSC where CLOCK_MONOTONIC itself is the TSC, else CLOCK_MONOTONIC through
 * the vDSO; no syscall either way) and add the difference here, in clock
 * ticks; the handler takes and zeroes it after processfunc.  The header
 * parser's own time (inside lwrite) is kept apart in hdr_ns. */
static __thread uint64_t cb_t0 __attribute__((tls_model("initial-exec")));
static __thread uint64_t cb_ns __attribute__((tls_model("initial-exec")));
static __thread uint64_t hdr_ns __attribute__((tls_model("initial-exec")));
static int cb_timing; /* 0 off, 1 CLOCK_MONOTONIC ns, 2 TSC */

static inline uint64_t mono_ns(void)
{
#if defined(__x86_64__)
    if (cb_timing == 2)
        return __builtin_ia32_rdtsc();
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void libcgi_cb_timing(int how) { cb_timing = how; }
/* Apache's header parser has just finished inside a callback (lwrite): its
 * time is taken from the callback's start, one clock read for both (what
 * the callback does before the parser is a search for the blank line). */
void libcgi_hdr_done(void)
{
    if (cb_timing && thread_guard && thread_guard->depth > 0 && current_request)
        hdr_ns += mono_ns() - cb_t0;
}

uint64_t libcgi_cb_take(uint64_t *hdr)
{
    uint64_t v = cb_ns;
    *hdr = hdr_ns;
    cb_ns = 0;
    hdr_ns = 0;
    return v;
}

static inline void enter(void)
{
    if (thread_guard && thread_guard->depth++ == 0 && cb_timing)
        cb_t0 = mono_ns();
}

static inline void leave(void)
{
    struct libcgi_guard *g = thread_guard;
    /* Only inside a request: terminatefunc's callbacks (no request) must
     * not show up in the next request's time. */
    if (g && g->depth == 1 && cb_timing && current_request)
        cb_ns += mono_ns() - cb_t0;
    if (g && --g->depth == 0 && g->armed && g->pending) {
        g->out.kind = LIBCGI_TIMEOUT;
        siglongjmp(g->env, 1);
    }
}

/* The Rust implementations, handed over once at child_init. */
struct libcgi_rs_api {
    int (*lwrite)(const void *, size_t);
    int (*lflush)(void);
    const char *(*get_remote_host)(void);
    size_t (*linput_length)(void);
    char *(*getenv)(const char *);
    char *(*secure_getenv)(const char *);
    int (*setenv)(const char *, const char *, int);
    int (*unsetenv)(const char *);
    int (*putenv)(char *);
    int (*clearenv)(void);
};
static struct libcgi_rs_api rs;

void libcgi_set_api(const struct libcgi_rs_api *api)
{
    rs = *api;
}

int libcgi_c_lwrite(const void *buf, size_t len)
{
    enter();
    int r = rs.lwrite(buf, len);
    leave();
    return r;
}

int libcgi_c_lputs(const char *s)
{
    if (s == NULL)
        return -1;
    enter();
    int r = rs.lwrite(s, strlen(s));
    leave();
    return r < 0 ? -1 : r;
}

int libcgi_c_lflush(void)
{
    enter();
    int r = rs.lflush();
    leave();
    return r;
}

const char *libcgi_c_get_remote_host(void)
{
    enter();
    const char *r = rs.get_remote_host();
    leave();
    return r;
}

size_t libcgi_c_linput_length(void)
{
    return rs.linput_length(); /* reads one field: nothing to defer */
}

int libcgi_c_lprintf(const char *fmt, ...)
{
    char small[1024];
    va_list ap, again;
    int n, rc;

    if (fmt == NULL)
        return -1;
    enter();
    va_start(ap, fmt);
    va_copy(again, ap);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        rc = -1;
    }
    else if ((size_t)n < sizeof small) {
        rc = rs.lwrite(small, (size_t)n);
    }
    else {
        char *big = malloc((size_t)n + 1);
        if (big == NULL) {
            rc = -1;
        }
        else {
            vsnprintf(big, (size_t)n + 1, fmt, again);
            rc = rs.lwrite(big, (size_t)n);
            free(big);
        }
    }
    va_end(again);
    leave();
    return rc < 0 ? -1 : n;
}

char *libcgi_c_getenv(const char *name)
{
    enter();
    char *r = rs.getenv(name);
    leave();
    return r;
}

char *libcgi_c_secure_getenv(const char *name)
{
    enter();
    char *r = rs.secure_getenv(name);
    leave();
    return r;
}

int libcgi_c_setenv(const char *name, const char *value, int overwrite)
{
    enter();
    int r = rs.setenv(name, value, overwrite);
    leave();
    return r;
}

int libcgi_c_unsetenv(const char *name)
{
    enter();
    int r = rs.unsetenv(name);
    leave();
    return r;
}

int libcgi_c_putenv(char *string)
{
    enter();
    int r = rs.putenv(string);
    leave();
    return r;
}

int libcgi_c_clearenv(void)
{
    enter();
    int r = rs.clearenv();
    leave();
    return r;
}

/* exit() and friends, as a script calls them: the request ends, not the
 * server process.  Outside a script call (a thread the script started) only
 * that thread ends. */
static void script_exit(int status)
{
    struct libcgi_guard *g = thread_guard;
    if (g && g->armed && g->depth == 0) {
        g->out.kind = LIBCGI_EXITED;
        g->out.exit_status = status;
        siglongjmp(g->env, 1);
    }
    pthread_exit(NULL);
}

void libcgi_c_exit(int status) { script_exit(status); }
void libcgi_c__exit(int status) { script_exit(status); }
void libcgi_c__Exit(int status) { script_exit(status); }
void libcgi_c_quick_exit(int status) { script_exit(status); }
