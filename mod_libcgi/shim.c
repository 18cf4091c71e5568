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
 * sig_coredump), as do faults on threads that are not in a script; the one
 * exception is the stack running out below a script frame.
 *
 * A jump is safe only from the script's own code (struct libcgi_code): a
 * jump out of libc, the loader or Apache can leave one of their locks held.
 * A timeout therefore jumps only when the interrupted PC is the script's
 * (the watchdog retries until it is, then, after a grace, forces it); a
 * fault elsewhere, or any jump out of dlclose, is made anyway but marks the
 * process unsound (doom): it is recycled, and the watchdog ends it if it
 * has not gone within PROGRESS_MS.  Nothing between the jump and the return
 * of libcgi_call allocates or takes a lock.
 * ====================================================================== */
#include <errno.h>
#include <stdint.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

enum { LIBCGI_RETURNED = 0, LIBCGI_FAULT = 1, LIBCGI_TIMEOUT = 2, LIBCGI_EXITED = 3, LIBCGI_PANIC = 4 };
enum { CALL_INT_STR = 0, CALL_INT_VOID = 1, CALL_VOID_VOID = 2, CALL_LOADER = 3 };

struct libcgi_outcome {
    int kind;        /* LIBCGI_* */
    int rc;          /* what the function returned (int kinds) */
    int signo;       /* LIBCGI_FAULT */
    int si_code;
    void *addr;      /* faulting address, where the kernel says */
    int exit_status; /* LIBCGI_EXITED */
    int unsafe_jump; /* the jump left code that is not the script's (libc, the
                        loader, our callbacks): the process is unsound */
    int stack;       /* the fault was the thread's stack running out */
};

/* Where a script's code is: its executable PT_LOAD segments, computed once at
 * load (guard.rs code_of), handed to the guard with every call. */
#define MAX_CODE_RANGES 4
struct libcgi_code {
    uintptr_t start[MAX_CODE_RANGES];
    uintptr_t end[MAX_CODE_RANGES];
    int n;
    const char *name; /* the script's path, for the last-resort log line */
};

struct libcgi_guard {
    sigjmp_buf env;
    volatile sig_atomic_t armed;     /* inside a script call */
    volatile sig_atomic_t depth;     /* inside our callbacks (nesting count) */
    volatile sig_atomic_t timed_out; /* set by the watchdog before it signals */
    volatile sig_atomic_t pending;   /* inside a callback: 1 a timeout arrived, 2 the callback panicked */
    volatile sig_atomic_t force;     /* set by the watchdog after the grace: jump even where unsafe */
    volatile sig_atomic_t seen;      /* timer signals the handler has taken (the watchdog's samples) */
    volatile sig_atomic_t in_loader; /* the call is dlclose: any jump leaves the loader lock held */
    volatile sig_atomic_t mask_changed; /* the script changed the signal mask: restore `mask` at the end */
    sigset_t mask;
    sigset_t server_blocked;         /* what the thread blocked before its first call (less the guard's) */
    const struct libcgi_code *code;
    struct libcgi_outcome out;
    void *watch;                     /* the Rust watchdog's entry for this thread */
    uintptr_t stack_low;             /* the thread's stack, cached at setup */
    uintptr_t stack_high;
    char *altstack;
    size_t altstack_len;
    struct libcgi_saved *outer;      /* the calls this one is nested in */
    /* Time in callbacks for mod_libcgi/metrics (see enter/leave): here rather
     * than in thread-locals of their own, because every callback has `g` in
     * a register already, where each extra thread-local costs a GOT load. */
    uint64_t cb_t0;                  /* the outermost callback's start */
    uint64_t cb_ns;                  /* summed callback time (clock ticks) */
    uint64_t hdr_ns;                 /* of which the header parser's callback */
    int hdr_in_cb;                   /* the header parser ran in this callback */
};

/* What a nested call (a subrequest run from inside a script's lwrite) saves
 * of the call it interrupts, on its own stack. */
struct libcgi_saved {
    sigjmp_buf env;
    sig_atomic_t armed, depth, pending, in_loader, mask_changed;
    sigset_t mask;
    const struct libcgi_code *code;
    struct libcgi_outcome out;
    struct libcgi_saved *outer;
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
/* Stack a callback must find left when a script calls it: Apache's output
 * filters (and a whole subrequest, for an include) run below it. */
#define CALLBACK_HEADROOM (256 * 1024)
/* How long the process may take, after an unsafe jump, to finish the
 * response and be recycled before the watchdog ends it. */
#define PROGRESS_MS 5000

/* Set in the child of a script's fork(): that process is never a request. */
static volatile sig_atomic_t forked_child;
/* The error log's descriptor (child_init), for the last-resort line. */
static int log_fd = 2;
/* CLOCK_MONOTONIC_COARSE ms by which an unsoundly recovered process must be
 * gone; 0: not doomed.  Set in the signal handler, read by the watchdog. */
static uint64_t doomed_at;
static char doom_name[256];
static volatile sig_atomic_t doom_signo; /* the fault that doomed it; 0: a forced timeout */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* vDSO: async-signal-safe */
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Async-signal-safe: a store and a copy into static memory. */
static void doom(const struct libcgi_code *code, int signo)
{
    uint64_t zero = 0;
    uint64_t when = mono_ms() + PROGRESS_MS;
    if (__atomic_compare_exchange_n(&doomed_at, &zero, when, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        const char *n = code && code->name ? code->name : "a script";
        size_t i = 0;
        for (; n[i] && i < sizeof doom_name - 1; i++)
            doom_name[i] = n[i];
        doom_name[i] = 0;
        doom_signo = signo;
    }
}

uint64_t libcgi_doomed_at(void)
{
    return __atomic_load_n(&doomed_at, __ATOMIC_SEQ_CST);
}

/* Whether a jump made this process unsound (it is then recycled whatever
 * LibCGIFaultAction says). */
int libcgi_unsound(void)
{
    return libcgi_doomed_at() != 0;
}

static int in_code(const struct libcgi_code *c, uintptr_t pc)
{
    if (c == NULL)
        return 0;
    for (int i = 0; i < c->n && i < MAX_CODE_RANGES; i++)
        if (pc >= c->start[i] && pc < c->end[i])
            return 1;
    return 0;
}

static uintptr_t pc_of(void *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.pc;
#else
#error "mod_libcgi: the interrupted PC is read for x86-64 and aarch64 only"
#endif
}

/* A SIGSEGV at an address at or just below the end of the thread's stack:
 * the stack ran out (the kernel's guard gap is 1 MiB below a main stack). */
static int stack_fault(const struct libcgi_guard *g, const void *addr)
{
    uintptr_t a = (uintptr_t)addr;
    return g->stack_low && a < g->stack_low + 64 * 1024 && a + 2 * 1024 * 1024 >= g->stack_low;
}

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

__attribute__((noreturn)) static void jump(struct libcgi_guard *g, int unsafe_jump)
{
    if (unsafe_jump) {
        g->out.unsafe_jump = 1;
        doom(g->code, g->out.kind == LIBCGI_FAULT ? g->out.signo : 0);
    }
    siglongjmp(g->env, 1);
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    struct libcgi_guard *g = thread_guard;
    int saved_errno = errno;

    if (sig == timer_signo) {
        if (g)
            g->seen++; /* every signal taken counts: the watchdog waits for it */
        if (g && g->armed && g->timed_out) {
            if (g->depth > 0) {
                /* Inside our callback: jumping now could leave a lock of ours
                 * held.  The callback's wrapper jumps when it returns.  A
                 * panic noted there already stays what ends the call. */
                if (!g->pending)
                    g->pending = 1;
                errno = saved_errno;
                return;
            }
            uintptr_t pc = pc_of(uc);
            /* Only where the script's own code runs is a jump known to leave
             * no lock held (of libc, the loader, Apache): elsewhere wait for
             * the watchdog's next signal, until the grace is over. */
            int safe = !g->in_loader && in_code(g->code, pc);
            if (safe || g->force || (g->in_loader && in_code(g->code, pc))) {
                g->out.kind = LIBCGI_TIMEOUT;
                g->out.addr = (void *)pc;
                jump(g, !safe);
            }
        }
        errno = saved_errno;
        return; /* deferred, or a late timer for a call that already ended */
    }
    if (g && g->armed) {
        int overflow = sig == SIGSEGV && si && si->si_code > 0 && stack_fault(g, si->si_addr);
        /* Inside our callbacks a fault is the server's, except the stack
         * running out: a script's recursion is below it. */
        if (g->depth == 0 || overflow) {
            int safe;
            if (g->depth > 0 || g->in_loader)
                safe = 0;
            else if (si && si->si_code > 0 && sig != SIGABRT)
                safe = in_code(g->code, pc_of(uc)); /* synchronous: where it happened */
            else if (si && si->si_code == SI_TKILL && si->si_pid == getpid() && sig != SIGABRT)
                safe = 1; /* raise() by the script: raise holds no lock */
            else
                safe = 0; /* e.g. abort() inside malloc after heap corruption */
            g->out.kind = LIBCGI_FAULT;
            g->out.signo = sig;
            g->out.si_code = si ? si->si_code : 0;
            g->out.addr = si ? si->si_addr : NULL;
            g->out.stack = overflow;
            jump(g, !safe);
        }
    }
    errno = saved_errno;
    chain(sig, si, uc);
}

/* The child of a script's fork() (vfork is bound to fork) is not a
 * request: no guard, no request, and the end of the script call ends it. */
static void atfork_child(void)
{
    forked_child = 1;
    current_request = NULL;
    struct libcgi_guard *g = thread_guard;
    if (g) {
        g->armed = 0;
        g->timed_out = 0;
        g->pending = 0;
        g->outer = NULL;
    }
}

/* An isolated worker installs no handlers, but the child of its script's
 * fork() must end as it does in the server (exit, or the return from
 * processfunc, ends it), not answer the worker's request a second time. */
int libcgi_watch_forks(void)
{
    return pthread_atfork(NULL, NULL, atfork_child);
}

/* Installs the handlers in a server child process (child_init).  Returns 0,
 * or the errno of the failing sigaction. */
int libcgi_install_handlers(int timer_signal, int error_log_fd)
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
    if (error_log_fd >= 0)
        log_fd = error_log_fd;
    for (int i = 0; i < NFAULTS; i++)
        if (sigaction(fault_signals[i], &sa, &previous[fault_signals[i]]) != 0)
            return errno;
    if (sigaction(timer_signo, &sa, &previous[timer_signo]) != 0)
        return errno;
    int e = pthread_atfork(NULL, NULL, atfork_child);
    if (e != 0)
        return e;
    return 0;
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
    void (*thread_gone)(void *watch);
};
static struct libcgi_rs_api rs;

void libcgi_set_api(const struct libcgi_rs_api *api)
{
    rs = *api;
}

static pthread_key_t guard_key;
static pthread_once_t guard_key_once = PTHREAD_ONCE_INIT;

/* The signals the server's threads block, as the first guarded thread found
 * them: for threads without a guard (a script's own), which inherited a
 * request thread's mask.  Written once under the lock, then published. */
static sigset_t first_server_blocked;
static int have_first_server_blocked;
static pthread_mutex_t first_server_blocked_lock = PTHREAD_MUTEX_INITIALIZER;

static void strip(sigset_t *set);

static void note_server_blocked(struct libcgi_guard *g)
{
    pthread_sigmask(SIG_SETMASK, NULL, &g->server_blocked);
    strip(&g->server_blocked);
    pthread_mutex_lock(&first_server_blocked_lock);
    if (!__atomic_load_n(&have_first_server_blocked, __ATOMIC_RELAXED)) {
        first_server_blocked = g->server_blocked;
        __atomic_store_n(&have_first_server_blocked, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&first_server_blocked_lock);
}
static int guard_key_ok;

/* A server thread that goes away (mod_http2's idle workers, a threaded MPM
 * shrinking) gives back its guard, alternate stack and watchdog entry. */
static void thread_gone(void *p)
{
    struct libcgi_guard *g = p;
    /* Removed under the watchdog's lock: it never touches a freed entry. */
    if (g->watch && rs.thread_gone)
        rs.thread_gone(g->watch);
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, NULL);
    munmap(g->altstack, g->altstack_len);
    thread_guard = NULL;
    free(g);
}

static void make_key(void)
{
    guard_key_ok = pthread_key_create(&guard_key, thread_gone) == 0;
}

/* Per-thread setup, once: an alternate signal stack (so that a script's
 * endless recursion can be caught on a thread whose own stack is exhausted),
 * the stack's bounds, and the signals unblocked (threaded MPMs block them in
 * worker threads). */
__attribute__((noinline, cold)) static int thread_setup(void)
{
    if (thread_guard)
        return 0;
    struct libcgi_guard *g = calloc(1, sizeof *g);
    if (g == NULL)
        return ENOMEM;
    long page = sysconf(_SC_PAGESIZE);
    size_t len = ALTSTACK_SIZE + (size_t)page;
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
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
        munmap(mem, len);
        free(g);
        return e;
    }
    g->altstack = mem;
    g->altstack_len = len;
    /* The stack's bounds, once (for the main thread glibc reads
     * /proc/self/maps, with malloc: never after a fault). */
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *low;
        size_t size;
        if (pthread_attr_getstack(&attr, &low, &size) == 0) {
            g->stack_low = (uintptr_t)low;
            g->stack_high = (uintptr_t)low + size;
        }
        pthread_attr_destroy(&attr);
    }
    note_server_blocked(g);
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < NFAULTS; i++)
        sigaddset(&set, fault_signals[i]);
    sigaddset(&set, timer_signo);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    pthread_once(&guard_key_once, make_key);
    if (guard_key_ok)
        pthread_setspecific(guard_key, g);
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

/* Called by the watchdog, the call's deadline claimed, once the grace for a
 * safe interruption is over: the next signal jumps wherever the thread is. */
void libcgi_guard_force(void *guard)
{
    ((struct libcgi_guard *)guard)->force = 1;
}

/* Whether the thread is inside one of our callbacks (read by the watchdog:
 * such a thread is bounded by Apache's own timeouts, and jumps on return). */
int libcgi_guard_depth(void *guard)
{
    return ((struct libcgi_guard *)guard)->depth;
}

/* How many timer signals the thread has taken: the watchdog sends the next
 * one only after the last was taken (real-time signals queue up, and a
 * queue delivered at once is one sample of where the thread is, not many). */
int libcgi_guard_seen(void *guard)
{
    return ((struct libcgi_guard *)guard)->seen;
}

/* Called by a thread disarming a call the watchdog signalled, after which
 * the watchdog no longer touches the guard: the mark must not carry over to
 * the thread's next call. */
void libcgi_guard_reset(void *guard)
{
    ((struct libcgi_guard *)guard)->timed_out = 0;
    ((struct libcgi_guard *)guard)->force = 0;
}

/* Formats a number without libc (the last resort may not take locks). */
static char *put_num(char *p, char *end, uint64_t v, int width)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < (int)sizeof tmp);
    while (n < width && n < (int)sizeof tmp)
        tmp[n++] = '0';
    while (n > 0 && p < end)
        *p++ = tmp[--n];
    return p;
}

static char *put_str(char *p, char *end, const char *s)
{
    while (s && *s && p < end)
        *p++ = *s++;
    return p;
}

/* The last resort, from the watchdog thread: one error-log line written with
 * write(2) (no malloc, no localtime: a lock of either may be what holds the
 * process), then the process ends, and the MPM starts a new one. */
__attribute__((noreturn)) void libcgi_last_resort(const char *script, const char *why)
{
    static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    static const char *const wday[] = { "Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed" };
    char buf[1024];
    char *p = buf, *end = buf + sizeof buf - 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* UTC civil date from days since the epoch (Howard Hinnant's algorithm). */
    int64_t secs = ts.tv_sec, days = secs / 86400, sod = secs % 86400;
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    p = put_str(p, end, "[");
    p = put_str(p, end, wday[days % 7]);
    p = put_str(p, end, " ");
    p = put_str(p, end, mon[m - 1]);
    p = put_str(p, end, " ");
    p = put_num(p, end, (uint64_t)d, 2);
    p = put_str(p, end, " ");
    p = put_num(p, end, (uint64_t)(sod / 3600), 2);
    p = put_str(p, end, ":");
    p = put_num(p, end, (uint64_t)(sod / 60 % 60), 2);
    p = put_str(p, end, ":");
    p = put_num(p, end, (uint64_t)(sod % 60), 2);
    p = put_str(p, end, ".");
    p = put_num(p, end, (uint64_t)(ts.tv_nsec / 1000), 6);
    p = put_str(p, end, " ");
    p = put_num(p, end, (uint64_t)y, 4);
    p = put_str(p, end, " UTC] [libcgi:crit] [pid ");
    p = put_num(p, end, (uint64_t)getpid(), 1);
    p = put_str(p, end, "] mod_libcgi: ");
    p = put_str(p, end, script);
    p = put_str(p, end, ": ");
    p = put_str(p, end, why);
    p = put_str(p, end, "; ending this server process so that it is replaced\n");
    ssize_t w = write(log_fd, buf, (size_t)(p - buf));
    (void)w;
    _exit(1);
}

/* The last resort for a doomed process that has not gone in time, naming
 * what doomed it. */
__attribute__((noreturn)) void libcgi_doom_expired(void)
{
    char why[200];
    char *p = why, *end = why + sizeof why - 1;
    if (doom_signo) {
        p = put_str(p, end, "signal ");
        p = put_num(p, end, (uint64_t)doom_signo, 1);
    }
    else {
        p = put_str(p, end, "a timeout forced");
    }
    p = put_str(p, end, " outside the script's own code, and the server process had not finished its response and exited 5 s later");
    *p = 0;
    libcgi_last_resort(doom_name, why);
}

/* Names the script a stuck guard is running, for the last resort. */
const char *libcgi_guard_script(void *guard)
{
    const struct libcgi_code *c = ((struct libcgi_guard *)guard)->code;
    return c && c->name ? c->name : "a script";
}

/* Whether `code` is running on this thread, in the current call or in one
 * it is nested in (a non-thread-safe script that includes itself). */
int libcgi_running_here(const void *code)
{
    struct libcgi_guard *g = thread_guard;
    if (g == NULL || !g->armed)
        return 0;
    if (g->code == code)
        return 1;
    for (struct libcgi_saved *s = g->outer; s; s = s->outer)
        if (s->code == code)
            return 1;
    return 0;
}

/* After a script's endless recursion, the thread's stack is resident down to
 * its end: hand the pages below the current frame back to the kernel, so a
 * fault costs no memory (they are zero-filled again if ever touched).  Only
 * the bounds cached at setup: no malloc or lock after a jump. */
static void release_unused_stack(struct libcgi_guard *g)
{
    char here;
    if (g->stack_low == 0)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    /* Keep a generous margin below this frame for the calls still to come. */
    uintptr_t end = ((uintptr_t)&here - 256 * 1024) & ~(page - 1);
    uintptr_t start = (g->stack_low + page - 1) & ~(page - 1);
    if (end > start && end < g->stack_high)
        madvise((void *)start, end - start, MADV_DONTNEED);
}

static int nested_call(struct libcgi_guard *g, void *fn, int how, char *arg, const struct libcgi_code *code,
                       struct libcgi_outcome *out);

/* Calls a script function under the guard.  Returns the outcome kind; the
 * details are copied to *out. */
int libcgi_call(void *fn, int how, char *arg, const struct libcgi_code *code, struct libcgi_outcome *out)
{
    if (__builtin_expect(thread_guard == NULL, 0)) {
        int e = thread_setup();
        if (e != 0) {
            memset(out, 0, sizeof *out);
            out->kind = -e;
            return out->kind;
        }
    }
    /* volatile: read after the jump, so it must not live in a register. */
    struct libcgi_guard *volatile g = thread_guard;
    if (__builtin_expect(g->armed, 0))
        return nested_call(g, fn, how, arg, code, out);
    memset(&g->out, 0, sizeof g->out);
    g->depth = 0;
    g->pending = 0;
    g->code = code;
    g->in_loader = how == CALL_LOADER;
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
        case CALL_LOADER:
            g->out.rc = ((int (*)(void *))fn)(arg);
            break;
        default:
            ((void (*)(void))fn)();
            break;
        }
        g->armed = 0;
        g->out.kind = LIBCGI_RETURNED;
        /* The child of a script's fork() that returns from processfunc ends
         * here: it must never go on as a copy of the server. */
        if (__builtin_expect(forked_child, 0))
            _exit(g->out.rc & 0xff);
    }
    else {
        /* Arrived here by siglongjmp (the mask is the thread's own: see
         * SA_NODEFER).  Nothing here allocates or locks. */
        g->armed = 0;
        if (g->out.kind == LIBCGI_FAULT && g->out.signo == SIGSEGV)
            release_unused_stack(g);
    }
    if (__builtin_expect(g->mask_changed, 0)) {
        /* The script changed its mask (through our sigprocmask): the thread
         * gets back the one it had. */
        pthread_sigmask(SIG_SETMASK, &g->mask, NULL);
        g->mask_changed = 0;
    }
    /* timed_out is left to the disarm (libcgi_guard_reset): the watchdog may
     * still mark this call until then. */
    g->depth = 0;
    *out = g->out;
    return out->kind;
}

/* A call made while another is in progress on this thread: a subrequest (an
 * include of a script) run from inside the outer script's lwrite.  The outer
 * call's state is saved here and given back afterwards, so that a fault or a
 * timeout after the include is still the outer call's. */
__attribute__((noinline, cold)) static int nested_call(struct libcgi_guard *g, void *fn, int how, char *arg,
                                                        const struct libcgi_code *code, struct libcgi_outcome *out)
{
    struct libcgi_saved s;
    memcpy(s.env, g->env, sizeof s.env);
    s.armed = g->armed;
    s.depth = g->depth;
    s.pending = g->pending;
    s.in_loader = g->in_loader;
    s.mask_changed = g->mask_changed;
    s.mask = g->mask;
    s.code = g->code;
    s.out = g->out;
    s.outer = g->outer;
    /* Disarmed first: a signal now finds no call (and is retried). */
    g->armed = 0;
    __asm__ __volatile__("" ::: "memory");
    g->outer = &s;
    g->mask_changed = 0;
    int kind = libcgi_call(fn, how, arg, code, out);
    g->armed = 0;
    __asm__ __volatile__("" ::: "memory");
    memcpy(g->env, s.env, sizeof s.env);
    g->depth = s.depth;
    g->pending = s.pending;
    g->in_loader = s.in_loader;
    g->mask_changed = s.mask_changed;
    g->mask = s.mask;
    g->code = s.code;
    g->out = s.out;
    g->outer = s.outer;
    __asm__ __volatile__("" ::: "memory");
    g->armed = s.armed;
    return kind;
}

/* ---- Callback wrappers --------------------------------------------------
 * Every function a script calls into goes through enter()/leave(): while
 * depth > 0 a fault is the server's and a timeout waits. */

/* The stack left at a callback's entry is too little for it (a script's
 * endless recursion through lprintf): the script's fault, caught here in
 * the wrapper, where no frame of ours lies below the jump. */
__attribute__((noinline, cold, noreturn)) static void stack_exhausted(struct libcgi_guard *g, void *sp)
{
    g->out.kind = LIBCGI_FAULT;
    g->out.signo = SIGSEGV;
    g->out.si_code = SEGV_MAPERR;
    g->out.addr = sp;
    g->out.stack = 1;
    siglongjmp(g->env, 1);
}

/* Time in callbacks, for mod_libcgi/metrics (the "callbacks" phase): the
 * outermost enter/leave read the clock (mod_libcgi/metrics/clock.rs: the
 * TSC where CLOCK_MONOTONIC itself is the TSC, else CLOCK_MONOTONIC through
 * the vDSO; no syscall either way) and add the difference to the thread's
 * guard (cb_ns), in clock ticks; the handler takes and zeroes it after
 * processfunc.  The callback in which Apache's header parser ran (an lwrite)
 * counts whole as the "output" phase instead (hdr_ns, which is part of
 * cb_ns): it parsed the headers and handed the response to Apache, and
 * marking it costs a flag where a clock read after the parser cost as much
 * as the rest of the callback timing. */
static int cb_timing; /* 0 off, 1 CLOCK_MONOTONIC ns, 2 TSC */

static inline uint64_t mono_ns(void)
{
#if defined(__x86_64__)
    if (__builtin_expect(cb_timing == 2, 1))
        return __builtin_ia32_rdtsc();
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void libcgi_cb_timing(int how) { cb_timing = how; }
/* Apache's header parser has just finished (request.rs).  Inside a callback
 * that callback is the output phase's; after processfunc (a script whose
 * output ended without the blank line) the handler times it itself. */
void libcgi_hdr_done(void)
{
    struct libcgi_guard *g = thread_guard;
    if (g && g->depth > 0)
        g->hdr_in_cb = 1;
}

uint64_t libcgi_cb_take(uint64_t *hdr)
{
    struct libcgi_guard *g = thread_guard;
    if (__builtin_expect(g == NULL, 0)) {
        *hdr = 0;
        return 0;
    }
    uint64_t v = g->cb_ns;
    *hdr = g->hdr_ns;
    g->cb_ns = 0;
    g->hdr_ns = 0;
    g->hdr_in_cb = 0; /* a callback left by a jump */
    return v;
}

static inline void enter(void)
{
    struct libcgi_guard *g = thread_guard;
    if (g) {
        void *sp = __builtin_frame_address(0);
        if (__builtin_expect((uintptr_t)sp - g->stack_low < CALLBACK_HEADROOM, 0) && g->armed && g->depth == 0)
            stack_exhausted(g, sp);
        if (g->depth++ == 0 && cb_timing)
            g->cb_t0 = mono_ns();
    }
}

static inline void leave(void)
{
    struct libcgi_guard *g = thread_guard;
    /* Callbacks outside a request add up here too: the time of initfunc's
     * and terminatefunc's is dropped where they run (metrics::loaded, the
     * registry's Script::drop), which costs less than asking here. */
    if (g && g->depth == 1 && cb_timing) {
        uint64_t d = mono_ns() - g->cb_t0;
        g->cb_ns += d;
        if (__builtin_expect(g->hdr_in_cb, 0)) {
            g->hdr_ns += d;
            g->hdr_in_cb = 0;
        }
    }
    if (g && --g->depth == 0 && g->armed && g->pending) {
        g->out.kind = g->pending == 2 ? LIBCGI_PANIC : LIBCGI_TIMEOUT;
        siglongjmp(g->env, 1);
    }
}

/* A Rust callback caught a panic of its own (mod_libcgi/panic.rs): the
 * script's call ends as after a timeout inside a callback, by the jump its
 * wrapper makes once the callback has returned (no Rust frame is jumped
 * over, and the panic never unwinds through the script's C frames).
 * Returns 0 when no call is there to end (a thread the script started). */
int libcgi_callback_panicked(void)
{
    struct libcgi_guard *g = thread_guard;
    if (forked_child || g == NULL || !g->armed)
        return 0;
    g->pending = 2;
    return 1;
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
    size_t n = rs.linput_length(); /* reads one field: nothing to defer */
    struct libcgi_guard *g = thread_guard;
    if (__builtin_expect(g && g->armed && g->depth == 0 && g->pending == 2, 0)) {
        g->out.kind = LIBCGI_PANIC;
        siglongjmp(g->env, 1);
    }
    return n;
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
 * that thread ends.  In the child of a script's fork() the process ends, by
 * _exit: it is a copy of the server, whose atexit handlers and stdio buffers
 * must not run twice. */
static void script_exit(int status)
{
    if (forked_child)
        _exit(status);
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

/* pthread_exit on the request's thread ends the request like exit(0) (an
 * unwind through the server's frames would abort the process). */
void libcgi_c_pthread_exit(void *retval)
{
    struct libcgi_guard *g = thread_guard;
    if (!forked_child && g && g->armed && g->depth == 0) {
        g->out.kind = LIBCGI_EXITED;
        g->out.exit_status = 0;
        siglongjmp(g->env, 1);
    }
    pthread_exit(retval);
}

/* abort() called by the script itself: a fault of the script that leaves no
 * lock held, so the jump is made here rather than from inside libc's abort.
 * (An abort raised inside libc, after heap corruption, comes as a SIGABRT
 * from libc's code: an unsafe jump, and the process is recycled.) */
void libcgi_c_abort(void)
{
    struct libcgi_guard *g = thread_guard;
    if (!forked_child && g && g->armed && g->depth == 0) {
        g->out.kind = LIBCGI_FAULT;
        g->out.signo = SIGABRT;
        g->out.si_code = SI_TKILL;
        siglongjmp(g->env, 1);
    }
    abort();
}

extern const char *__progname;

/* assert() failing in the script: glibc's message, then abort() as above
 * (glibc's own __assert_fail formats with malloc and then aborts inside
 * libc). */
void libcgi_c___assert_fail(const char *assertion, const char *file, unsigned int line, const char *function)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s%s%s:%u: %s%sAssertion `%s' failed.\n", __progname, __progname[0] ? ": " : "",
                     file, line, function ? function : "", function ? ": " : "", assertion);
    if (n > 0) {
        ssize_t w = write(log_fd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        (void)w;
    }
    libcgi_c_abort();
}

/* ---- Signals a script must not take from the guard ----------------------
 * The fault signals and the timer signal stay ours: a script's mask changes
 * are applied without them (and undone when the call ends), and handlers
 * for them are refused with EINVAL.  A raw system call that blocks them
 * anyway is caught by the watchdog (the signal is never acted on). */

static int guard_signal(int sig)
{
    if (sig == timer_signo)
        return 1;
    for (int i = 0; i < NFAULTS; i++)
        if (fault_signals[i] == sig)
            return 1;
    return 0;
}


/* The signals whose handling the MPM relies on: SIGTERM wakes a worker or
 * event child's main thread and ends a prefork child, SIGHUP and SIGUSR1
 * stop and recycle children, SIGWINCH is graceful-stop, SIGINT/SIGQUIT end
 * one process, and SIGPIPE is ignored so that a vanished client costs a
 * failed write, not the process.  A script may block them (undone after the
 * call) but not change what they do: signal(SIGPIPE, SIG_DFL) would let the
 * next closed connection kill every request of the process, and SIGTERM
 * ignored would make it outlive every restart. */
static int server_signal(int sig)
{
    switch (sig) {
    case SIGTERM: case SIGHUP: case SIGUSR1: case SIGWINCH: case SIGINT: case SIGQUIT: case SIGPIPE:
        return 1;
    }
    return 0;
}

/* Signals whose disposition a script may not change. */
static int reserved_signal(int sig)
{
    return guard_signal(sig) || server_signal(sig);
}

/* Asking a server signal for what it already does is no change (the common
 * signal(SIGPIPE, SIG_IGN) of C programs succeeds). */
static int refused(int sig, void (*handler)(int), int siginfo)
{
    if (!reserved_signal(sig))
        return 0;
    if (guard_signal(sig) || siginfo)
        return 1;
    struct sigaction cur;
    return sigaction(sig, NULL, &cur) != 0 || (cur.sa_flags & SA_SIGINFO) || cur.sa_handler != handler;
}

static void strip(sigset_t *set)
{
    for (int i = 0; i < NFAULTS; i++)
        sigdelset(set, fault_signals[i]);
    sigdelset(set, timer_signo);
}

/* The first change of the mask in a call remembers the mask to restore. */
static void note_mask(void)
{
    struct libcgi_guard *g = thread_guard;
    if (g && g->armed && !g->mask_changed) {
        pthread_sigmask(SIG_SETMASK, NULL, &g->mask);
        g->mask_changed = 1;
    }
}

/* A script may block more signals, never unblock one its server thread
 * blocks: worker and event block SIGTERM & co. in every thread but the
 * child's main one, and a process-directed signal goes to any thread that
 * does not block it, so a worker thread that took SIGTERM would leave the
 * main thread waiting on the pipe of death (a process that never exits). */
static const sigset_t *server_blocked(void)
{
    struct libcgi_guard *g = thread_guard;
    if (g)
        return &g->server_blocked;
    return __atomic_load_n(&have_first_server_blocked, __ATOMIC_ACQUIRE) ? &first_server_blocked : NULL;
}

int libcgi_c_pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
    if (set == NULL)
        return pthread_sigmask(how, set, old);
    sigset_t s = *set;
    const sigset_t *keep = server_blocked();
    if (how == SIG_UNBLOCK) {
        for (int sig = 1; keep && sig < NSIG; sig++)
            if (sigismember(keep, sig) == 1)
                sigdelset(&s, sig);
    }
    else {
        strip(&s);
        if (how == SIG_SETMASK && keep)
            sigorset(&s, &s, keep);
    }
    note_mask();
    return pthread_sigmask(how, &s, old);
}

int libcgi_c_sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    int e = libcgi_c_pthread_sigmask(how, set, old);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}

int libcgi_c_sigsuspend(const sigset_t *mask)
{
    sigset_t s = *mask;
    strip(&s);
    const sigset_t *keep = server_blocked();
    if (keep)
        sigorset(&s, &s, keep);
    return sigsuspend(&s);
}

int libcgi_c_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (act != NULL && refused(sig, act->sa_handler, act->sa_flags & SA_SIGINFO)) {
        errno = EINVAL;
        return -1;
    }
    return sigaction(sig, act, old);
}

typedef void (*sighandler_fn)(int);

sighandler_fn libcgi_c_signal(int sig, sighandler_fn handler)
{
    if (refused(sig, handler, 0)) {
        errno = EINVAL;
        return SIG_ERR;
    }
    return signal(sig, handler);
}

sighandler_fn libcgi_c_sysv_signal(int sig, sighandler_fn handler)
{
    if (refused(sig, handler, 0)) {
        errno = EINVAL;
        return SIG_ERR;
    }
    return sysv_signal(sig, handler);
}

/* The System V functions are deprecated, but a script may still import them. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
sighandler_fn libcgi_c_sigset(int sig, sighandler_fn handler)
{
    if (handler == SIG_HOLD ? guard_signal(sig) : refused(sig, handler, 0)) {
        errno = EINVAL;
        return SIG_ERR;
    }
    if (handler == SIG_HOLD)
        note_mask();
    return sigset(sig, handler);
}

int libcgi_c_sighold(int sig)
{
    if (guard_signal(sig)) {
        errno = EINVAL;
        return -1;
    }
    note_mask();
    return sighold(sig);
}

int libcgi_c_sigignore(int sig)
{
    if (refused(sig, SIG_IGN, 0)) {
        errno = EINVAL;
        return -1;
    }
    return sigignore(sig);
}
#pragma GCC diagnostic pop

/* The alternate stack is the guard's (a script's own endless recursion is
 * caught on it): queries only. */
int libcgi_c_sigaltstack(const stack_t *ss, stack_t *old)
{
    if (ss != NULL) {
        errno = EPERM;
        return -1;
    }
    return sigaltstack(NULL, old);
}
