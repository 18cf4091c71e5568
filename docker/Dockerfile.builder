# OPTIONAL builder for mod_libcgi, for hosts that CAN pull a Rust image
# (no registry is reachable on this project's machines: there the module is
# built on the host and docker/Dockerfile copies it in).
#
# Used by:  LIBCGI_MODULE_SOURCE=docker docker/build-images.sh
# Context:  a staged copy of Cargo.toml, Cargo.lock, build.rs, mod_libcgi/,
#           include/ and the workspace's other members (build-images.sh makes
#           it; target/ stays out).
# Result:   /out/libmod_libcgi.so, copied out with docker create + docker cp
#           (works with the legacy builder, which has no --output).
#
# The Rust image must be Debian bookworm based so that the headers bindgen
# reads (apache2-dev) and the glibc linked against match the runtime image.
# A separate file rather than a stage of docker/Dockerfile because the
# legacy builder builds every stage before the target, and would try to
# pull the Rust image even when it is not wanted.
ARG RUST_IMAGE=rust:1-bookworm
FROM ${RUST_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        apache2-dev libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mod_libcgi \
 && mkdir -p /out \
 && cp target/release/libmod_libcgi.so /out/ \
 && nm -D --defined-only /out/libmod_libcgi.so | grep -qw libcgi_module
