/*
 * libcgi.h - the script ABI of mod_libcgi.
 *
 * A LibCGI script is a shared object built with
 *
 *     cc -shared -fPIC -o run.so run.c
 *
 * and linked against nothing of mod_libcgi's: the functions declared below
 * are provided by the module inside the Apache process and are resolved when
 * the script is loaded.  The names, types and meanings are a fixed contract.
 */
#ifndef LIBCGI_H
#define LIBCGI_H

#include <stddef.h>

/*
 * C++: an exception must not leave the script's functions (the module
 * cannot catch it).  One that does finds no handler past the script (the
 * module's frames carry no unwind tables), so std::terminate aborts inside
 * the script: a fault mod_libcgi contains (500, unload), never an unwind
 * through the server's frames.  The declarations are deliberately not
 * noexcept, so that existing C++ scripts keep compiling; a definition may
 * not add noexcept either (C++17 makes it part of the type).
 */
#ifdef __cplusplus
extern "C" {
#endif

/* ---- Exported by the script ------------------------------------------- */

/*
 * Required.  Called once per request.  `input` is the request body,
 * NUL-terminated (the body may itself contain NUL bytes: use
 * linput_length()), or NULL when the request has no body (GET).  The memory
 * belongs to the request and is gone when processfunc returns.
 *
 * Return 0 on success.  Non-zero means failure: the client gets a 500 if
 * nothing was sent to it yet; the failure is logged either way.
 */
int processfunc(char *input);

/*
 * Optional.  Called once after the script is loaded, before the first
 * processfunc, inside the request that caused the load (so getenv() sees
 * that request's variables).  Non-zero: the load failed, the request gets a
 * 500, and the next request tries to load the script again.
 */
int initfunc(void);

/*
 * Optional.  Called once before the script is unloaded: when the file was
 * replaced and no request uses the old version any more, after the script
 * failed, and when the server process exits or restarts gracefully.
 */
void terminatefunc(void);

/*
 * Optional.  Define it as 1 when processfunc may run on several threads of
 * one server process at once.  Without it, mod_libcgi never runs two
 * processfunc calls of this script in one process at the same time.
 */
extern int libcgi_thread_safe;

/* ---- Provided by mod_libcgi -------------------------------------------- */

/*
 * Output is CGI output: header lines ("Content-Type: text/html",
 * "Status: 404 Not Found", "Location: /x", ...), one blank line, then the
 * body.  LF and CRLF line ends are both accepted.
 */

/* Write len bytes.  Returns len, or -1 on error (client gone, headers bad,
 * called outside a request). */
int lwrite(const void *buf, size_t len);

/* Write a NUL-terminated string; adds NO newline (like fputs).  Returns >= 0
 * on success, -1 on error. */
int lputs(const char *s);

/* printf-style formatted output.  Returns bytes written or -1. */
int lprintf(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Push what is buffered to the client now (once the header block is
 * complete).  0 ok, -1 error. */
int lflush(void);

/* The client's host name by reverse DNS (double-reverse checked), looked up
 * only when called; the client's IP address as text if the lookup fails.
 * Valid until the request ends. */
const char *get_remote_host(void);

/* Byte length of the body passed to processfunc (0 when it was NULL). */
size_t linput_length(void);

#ifdef __cplusplus
}
#endif

#endif /* LIBCGI_H */
