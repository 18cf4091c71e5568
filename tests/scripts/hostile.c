/*
 * A script that attacks the fault guard and the watchdog (issue 9), chosen
 * per request by the query string "mode=...".  Build flags:
 *   -DNOT_THREAD_SAFE   do not declare libcgi_thread_safe (for the nested
 *                       self-include)
 *   -DINCLUDE_PATH="/x" the path mode=include* includes (a script)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "libcgi.h"

#ifndef NOT_THREAD_SAFE
int libcgi_thread_safe = 1;
#endif

static const char *query(void)
{
    const char *q = getenv("QUERY_STRING");
    return q ? q : "";
}

static int is(const char *m)
{
    const char *q = query();
    size_t n = strlen(m);
    return strncmp(q, "mode=", 5) == 0 && strncmp(q + 5, m, n) == 0 && (q[5 + n] == 0 || q[5 + n] == '&');
}

static int has(const char *word)
{
    return strstr(query(), word) != NULL;
}

/* Set by mode=dtor*: the destructor misbehaves when the script is unloaded. */
static volatile int dtor_mode;

__attribute__((destructor)) static void on_unload(void)
{
    if (dtor_mode == 1)
        *(volatile int *)0 = 5;
    if (dtor_mode == 2)
        for (volatile int i = 0;; i++)
            ;
}

/* The everyday bug of issue 9: a loop that spends its time inside libc. */
static volatile long sink;
static void libc_loop(void)
{
    for (;;) {
        char *p = malloc(64 + (size_t)(sink & 255));
        struct tm tm;
        time_t t = time(NULL) + sink;
        localtime_r(&t, &tm);
        p[0] = (char)tm.tm_sec;
        sink += p[0];
        free(p);
    }
}

static int deep(int n)
{
    lprintf("%d\n", n);
    return deep(n + 1) + 1;
}

static sigjmp_buf own_env;
static void own_handler(int sig)
{
    (void)sig;
    siglongjmp(own_env, 1);
}

static void *thread_exits(void *arg)
{
    (void)arg;
    exit(0);
}

static int fork_and_wait(int how)
{
    pid_t pid = how == 2 ? vfork() : fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (how == 0)
            exit(0);
        if (how == 1) {
            execl("/nonexistent/program", "program", (char *)NULL);
            _exit(127);
        }
        if (how == 2)
            _exit(3);
        if (how == 3) {
            /* Writes nothing to the parent's client, returns from
             * processfunc: the child must end there. */
            if (lputs("child output\n") >= 0)
                return 99;
            return 4;
        }
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

int processfunc(char *input)
{
    (void)input;
    if (is("libcloop"))
        libc_loop();
    if (is("doublefree")) {
        /* Not tcache-sized: glibc catches the second free under the arena
         * lock and aborts inside free(). */
        char *volatile p = malloc(4096);
        char *volatile q = malloc(4096);
        free(p);
        free(p);
        free(q);
        return 0;
    }
    if (is("recurse_lprintf")) {
        lputs("Content-Type: text/plain\n\n");
        return deep(0);
    }
    if (is("fork_exit") || is("fork_exec") || is("vfork") || is("fork_return")) {
        int how = is("fork_exit") ? 0 : is("fork_exec") ? 1 : is("vfork") ? 2 : 3;
        int st = fork_and_wait(how);
        lprintf("Content-Type: text/plain\n\nchild status %d pid %ld\n", st, (long)getpid());
        return 0;
    }
    if (is("system")) {
        /* posix_spawn underneath (CLONE_VFORK): the child runs only libc
         * until its exec. */
        int st = system("exit 5");
        FILE *f = popen("echo popen-out", "r");
        char line[64] = "";
        if (f == NULL || fgets(line, sizeof line, f) == NULL)
            strcpy(line, "none\n");
        int pst = f ? pclose(f) : -1;
        lprintf("Content-Type: text/plain\n\nsystem %d popen %d %s", WEXITSTATUS(st), pst, line);
        return 0;
    }
    if (is("blockmask")) {
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, NULL);
        for (volatile int i = 0;; i++)
            ;
    }
    if (is("blockmask_quick")) {
        /* Blocks what it may, returns: the next request's mask is the
         * server's again. */
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
        lputs("Content-Type: text/plain\n\nblocked\n");
        return 0;
    }
    if (is("unblockmask")) {
        /* Unblocks everything both ways there are, then says what the
         * thread blocks now, during the call. */
        sigset_t all, none, cur;
        sigfillset(&all);
        sigemptyset(&none);
        pthread_sigmask(SIG_UNBLOCK, &all, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        pthread_sigmask(SIG_SETMASK, NULL, &cur);
        lprintf("Content-Type: text/plain\n\nSIGTERM %d SIGUSR1 %d SIGSEGV %d\n", sigismember(&cur, SIGTERM),
                sigismember(&cur, SIGUSR1), sigismember(&cur, SIGSEGV));
        return 0;
    }
    if (is("serversignals")) {
        /* Tries to change what the server's own signals do; asking SIGPIPE
         * to stay ignored is fine. */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        int term = sigaction(SIGTERM, &sa, NULL);
        int pipe_dfl = signal(SIGPIPE, SIG_DFL) == SIG_ERR ? -1 : 0;
        int pipe_ign = signal(SIGPIPE, SIG_IGN) == SIG_ERR ? -1 : 0;
        int usr1 = sigignore(SIGUSR1);
        struct sigaction cur;
        sigaction(SIGPIPE, NULL, &cur);
        lprintf("Content-Type: text/plain\n\nSIGTERM %d SIGPIPE dfl %d ign %d SIGUSR1 %d; SIGPIPE ignored %d\n", term,
                pipe_dfl, pipe_ign, usr1, cur.sa_handler == SIG_IGN);
        return 0;
    }
    if (is("sigmask")) {
        sigset_t cur;
        pthread_sigmask(SIG_SETMASK, NULL, &cur);
        lprintf("Content-Type: text/plain\n\nSIGTERM %d SIGUSR1 %d SIGSEGV %d\n", sigismember(&cur, SIGTERM),
                sigismember(&cur, SIGUSR1), sigismember(&cur, SIGSEGV));
        return 0;
    }
    if (is("rawblock")) {
        /* The raw system call, past any wrapper. */
        unsigned long all = ~0UL;
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, sizeof all);
        for (volatile int i = 0;; i++)
            ;
    }
    if (is("ownsegv")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = own_handler;
        int rc = sigaction(SIGSEGV, &sa, NULL);
        signal(SIGBUS, own_handler);
        if (sigsetjmp(own_env, 1) == 0) {
            *(volatile int *)0 = 1;
        }
        lprintf("Content-Type: text/plain\n\nown handler ran (sigaction %d)\n", rc);
        return 0;
    }
    if (is("sleep")) {
        /* Blocked in a system call: the timer cannot jump safely there. */
        lputs("Content-Type: text/plain\n\n");
        for (;;)
            sleep(100); /* each signal ends one sleep: back to the next */
    }
    if (is("thread_exit")) {
        pthread_t t;
        pthread_create(&t, NULL, thread_exits, NULL);
        pthread_join(t, NULL);
        lprintf("Content-Type: text/plain\n\njoined pid %ld\n", (long)getpid());
        return 0;
    }
    if (is("pthread_exit")) {
        lputs("Content-Type: text/plain\n\nbefore pthread_exit");
        pthread_exit(NULL);
    }
    if (is("dtorsegv") || is("dtorhang")) {
        dtor_mode = is("dtorsegv") ? 1 : 2;
        *(volatile int *)0 = 6;
    }
    if (is("usleep")) {
        usleep(50 * 1000);
        lprintf("Content-Type: text/plain\n\nslept pid %ld\n", (long)getpid());
        return 0;
    }
#ifdef INCLUDE_PATH
    if (is("include") || is("include_segv") || is("include_loop") || is("include_self")) {
        lputs("Content-Type: text/html\n\n<p>before</p>\n");
        if (is("include_self"))
            lputs("<!--#include virtual=\"" INCLUDE_PATH "?mode=inner\" -->\n");
        else
            lputs("<!--#include virtual=\"" INCLUDE_PATH "\" -->\n");
        /* Pushed through mod_include now: the subrequest runs inside this
         * call. */
        lflush();
        lputs("<p>after</p>\n");
        lflush();
        if (is("include_segv"))
            *(volatile int *)0 = 7;
        if (is("include_loop"))
            for (volatile int i = 0;; i++)
                ;
        return 0;
    }
#endif
    if (is("inner")) {
        lputs("Content-Type: text/plain\n\ninner\n");
        return 0;
    }
    (void)has;
    lprintf("Content-Type: text/plain\n\nok pid=%ld", (long)getpid());
    return 0;
}
