#!/usr/bin/env bash
# Build the rig's images: $LIBCGI_HTTPD_IMAGE (docker/Dockerfile) and
# $LIBCGI_HAPROXY_IMAGE (docker/haproxy/Dockerfile), both FROM the local base.
#
# The module and the example scripts are compiled OUTSIDE the images (no
# toolchain in them, and none can be pulled here):
#   module:  LIBCGI_MODULE_SOURCE=host (default)  uses $LIBCGI_MODULE_SO,
#                default target/release/libmod_libcgi.so (cargo build --release;
#                run-rig.sh does that for you)
#            LIBCGI_MODULE_SOURCE=docker  builds it in docker/Dockerfile.builder,
#                which needs a pullable Rust image (LIBCGI_RUST_IMAGE,
#                default rust:1-bookworm); not possible without a registry
#   scripts: examples/*.c -> cc -shared -fPIC -I include (host cc, $CC)
#
# Env: LIBCGI_BASE_FROM  image to build FROM (default: output of build-base.sh)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

cd "$LIBCGI_REPO_DIR"
CC=${CC:-cc}
MODULE_SOURCE=${LIBCGI_MODULE_SOURCE:-host}
MODULE_SO=${LIBCGI_MODULE_SO:-$LIBCGI_REPO_DIR/target/release/libmod_libcgi.so}
CTX=$LIBCGI_WORK_DIR/httpd-context

base=${LIBCGI_BASE_FROM:-$("$LIBCGI_DOCKER_DIR/build-base.sh")}
image_exists "$base" || die "base image $base does not exist (run docker/build-base.sh)"
log "building FROM $base"

rm -rf "$CTX"
mkdir -p "$CTX"/{module,apache-conf,libcgi-bin,httpd}

# --- the module -----------------------------------------------------------------
case $MODULE_SOURCE in
    host)
        [[ -f $MODULE_SO ]] || die "module not found: $MODULE_SO
  build it first:  (cd $LIBCGI_REPO_DIR && cargo build --release)
  or point LIBCGI_MODULE_SO at a built mod_libcgi .so"
        ;;
    docker)
        rust_image=${LIBCGI_RUST_IMAGE:-rust:1-bookworm}
        src=$LIBCGI_WORK_DIR/builder-context
        rm -rf "$src" && mkdir -p "$src"
        # Only what cargo needs: keeps target/ (GBs) out of the build context.
        # The workspace's members must be there for cargo to read the root
        # manifest, though only the module is built.
        cp -a Cargo.toml Cargo.lock build.rs mod_libcgi include sdk "$src"/
        cp -a --parents examples/rust tests/rust-scripts "$src"/
        log "building the module in $rust_image (docker/Dockerfile.builder)"
        docker_build -f "$LIBCGI_DOCKER_DIR/Dockerfile.builder" \
            --build-arg RUST_IMAGE="$rust_image" -t mod-libcgi/module-builder:latest "$src" >&2 ||
            die "builder image failed (can $rust_image be pulled? without a registry use LIBCGI_MODULE_SOURCE=host)"
        cid=$(docker create mod-libcgi/module-builder:latest)
        docker cp "$cid:/out/libmod_libcgi.so" "$LIBCGI_WORK_DIR/libmod_libcgi.so"
        docker rm "$cid" >/dev/null
        MODULE_SO=$LIBCGI_WORK_DIR/libmod_libcgi.so
        ;;
    *) die "LIBCGI_MODULE_SOURCE must be host or docker, not '$MODULE_SOURCE'" ;;
esac
# A cdylib without the module record is not an Apache module (e.g. a stale or
# half-written build): say so here rather than as a LoadModule error later.
if command -v nm >/dev/null; then
    syms=$(nm -D --defined-only "$MODULE_SO" 2>/dev/null || true)
    grep -qw libcgi_module <<<"$syms" ||
        die "$MODULE_SO does not export libcgi_module (nm -D): not a finished mod_libcgi build"
fi
cp "$MODULE_SO" "$CTX/module/mod_libcgi.so"
module_sha=$(sha256sum "$CTX/module/mod_libcgi.so" | cut -d' ' -f1)
log "module: $MODULE_SO (sha256 ${module_sha:0:16}…)"

# --- Apache config: the project's, else the provisional copies ---------------------
for f in libcgi.load libcgi.conf; do
    if [[ -f apache-conf/$f ]]; then
        cp "apache-conf/$f" "$CTX/apache-conf/$f"
    else
        warn "apache-conf/$f missing: using PROVISIONAL docker/provisional/$f"
        cp "$LIBCGI_DOCKER_DIR/provisional/$f" "$CTX/apache-conf/$f"
    fi
done
# Scripts go where the conf's Alias /libcgi-bin/ points.
bin_dir=$(awk '$1 == "Alias" && $2 ~ "^/libcgi-bin/?$" { gsub(/"/, "", $3); print $3; exit }' "$CTX/apache-conf/libcgi.conf")
bin_dir=${bin_dir%/}
[[ -n $bin_dir ]] || die "no 'Alias /libcgi-bin/ DIR' in libcgi.conf: cannot tell where scripts go"

# --- example scripts, compiled on the host ------------------------------------------
command -v "$CC" >/dev/null || die "no C compiler ($CC) to build examples/*.c (apt-get install gcc)"
shopt -s nullglob
examples=(examples/*.c)
((${#examples[@]})) || die "no examples/*.c to compile"
for c in "${examples[@]}"; do
    so=$CTX/libcgi-bin/$(basename "${c%.c}").so
    "$CC" -shared -fPIC -O2 -Wall -I include -o "$so" "$c" || die "compiling $c failed"
done
[[ -f $CTX/libcgi-bin/hello.so ]] || die "examples/hello.c is missing: the smoke check requests /libcgi-bin/hello.so"
log "scripts: $(cd "$CTX/libcgi-bin" && echo *.so) -> $bin_dir"

cp "$LIBCGI_DOCKER_DIR"/httpd/* "$CTX/httpd/"
chmod 0755 "$CTX/httpd/entrypoint.sh" "$CTX/httpd/healthcheck.sh"

# --- images -----------------------------------------------------------------------
# Full build output goes to a log (shown on failure): -q would hide the
# failing command's own messages.
build_image() { # tag dockerfile context [build args...]
    local tag=$1 file=$2 ctx=$3 t0=$SECONDS
    local blog=$LIBCGI_WORK_DIR/build-${tag//[\/:]/_}.log
    shift 3
    local previous
    previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    # --force-rm: a failed step must not leave its container behind.
    if ! docker_build --force-rm -f "$file" "$@" -t "$tag" "$ctx" >"$blog" 2>&1; then
        tail -n 40 "$blog" >&2
        die "building $tag failed (full log: $blog)"
    fi
    # A rebuild leaves the previous image untagged: drop it so images do not
    # pile up run after run (fails harmlessly while a container uses it).
    if [[ -n $previous && $previous != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    log "built $tag in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

build_image "$LIBCGI_HTTPD_IMAGE" "$LIBCGI_DOCKER_DIR/Dockerfile" "$CTX" \
    --build-arg BASE_IMAGE="$base" \
    --build-arg LIBCGI_BIN_DIR="$bin_dir" \
    --build-arg MODULE_SHA256="$module_sha"
build_image "$LIBCGI_HAPROXY_IMAGE" "$LIBCGI_DOCKER_DIR/haproxy/Dockerfile" "$LIBCGI_DOCKER_DIR/haproxy" \
    --build-arg BASE_IMAGE="$base"
