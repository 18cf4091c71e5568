/*
 * An LD_PRELOAD interposer for the spawn-failure tests: while the file named
 * by $LIBCGI_FAIL_THREADS exists, pthread_create fails with EAGAIN for the
 * threads mod_libcgi starts (their start routine is in the module), as it
 * would under RLIMIT_NPROC.  The MPM's own threads are left alone, so the
 * server itself keeps running.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    static create_fn real;
    if (real == NULL)
        real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
    const char *flag = getenv("LIBCGI_FAIL_THREADS");
    if (flag != NULL && access(flag, F_OK) == 0) {
        Dl_info info;
        if (dladdr((void *)fn, &info) && info.dli_fname && strstr(info.dli_fname, "mod_libcgi"))
            return EAGAIN;
    }
    return real(t, attr, fn, arg);
}
