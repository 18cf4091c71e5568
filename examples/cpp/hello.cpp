// hello.cpp - a LibCGI script in C++: a static object, and exceptions.
//   c++ -shared -fPIC -O2 -I include -o hello-cpp.so examples/cpp/hello.cpp
//
// Routes (PATH_INFO):
//   (none)    a greeting from a static object
//   /caught   an exception thrown and caught inside processfunc: a 400
//   /escape   an exception that escapes processfunc: a fault (see below)
//
// Caveats:
// - Static objects are constructed inside dlopen, before the module's fault
//   guard and before it rewrites the script's getenv: a constructor that
//   crashes takes the server process down, and getenv() there reads the
//   server's environment, not a request's.  Keep constructors trivial (as
//   Greeter's is) and do real set-up in initfunc.  Destructors of statics
//   run when the module closes the script (after terminatefunc).
// - An exception must never leave processfunc, initfunc or terminatefunc:
//   the module is C and Rust and cannot catch it.  One that escapes finds
//   no handler (the module's frames have no unwind tables), so
//   std::terminate aborts: a SIGABRT inside the script, which mod_libcgi
//   turns into a 500 and an unload (the next request loads it afresh).
//   Catch what you can handle, as /caught does.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "libcgi.h"

namespace {

struct Greeter {
    std::string greeting;
    bool constructed;
    Greeter() : greeting("Hello from C++"), constructed(true) {}
};

Greeter greeter; // constructed when the script is loaded

std::string path_info()
{
    const char *p = std::getenv("PATH_INFO");
    return p ? p : "";
}

} // namespace

int initfunc(void)
{
    return greeter.constructed ? 0 : 1;
}

int processfunc(char *input)
{
    (void)input;
    const std::string path = path_info();
    try {
        if (path == "/caught")
            throw std::invalid_argument("no such thing");
    } catch (const std::exception &e) {
        lprintf("Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\ncaught: %s\n", e.what());
        return 0;
    }
    if (path == "/escape")
        throw std::runtime_error("escapes processfunc"); // no handler above: std::terminate
    lprintf("Content-Type: text/plain\r\n\r\n%s (static object constructed: %s)\n", greeter.greeting.c_str(),
            greeter.constructed ? "yes" : "no");
    return 0;
}
