// A C++ script that does not include libcgi.h (so processfunc is not
// declared at all) and lets an exception escape: tests/rust_sdk.rs checks
// that this is a contained fault (std::terminate -> abort -> SIGABRT).
#include <stdexcept>

extern "C" int processfunc(char *)
{
    throw std::runtime_error("escaped without noexcept");
}
