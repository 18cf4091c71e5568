# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# Helpers shared by the docker/ scripts.  Source it; it defines functions and
# a few variables only, and runs nothing.

LIBCGI_DOCKER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIBCGI_REPO_DIR=$(cd "$LIBCGI_DOCKER_DIR/.." && pwd)
# Scratch space for build contexts and the base rootfs.  Git-ignored.
LIBCGI_WORK_DIR=${LIBCGI_WORK_DIR:-$LIBCGI_DOCKER_DIR/.build}

# Image names.  Overridable so two checkouts on one host do not fight.
LIBCGI_BASE_IMAGE=${LIBCGI_BASE_IMAGE:-mod-libcgi/base:bookworm}
LIBCGI_BASE_PKGS_IMAGE=${LIBCGI_BASE_PKGS_IMAGE:-mod-libcgi/base:bookworm-pkgs}
LIBCGI_HTTPD_IMAGE=${LIBCGI_HTTPD_IMAGE:-mod-libcgi/httpd:latest}
LIBCGI_HAPROXY_IMAGE=${LIBCGI_HAPROXY_IMAGE:-mod-libcgi/haproxy:latest}

_libcgi_prog=$(basename "$0")
log()  { printf '[%s %(%H:%M:%S)T] %s\n' "$_libcgi_prog" -1 "$*" >&2; }
warn() { printf '[%s %(%H:%M:%S)T] WARNING: %s\n' "$_libcgi_prog" -1 "$*" >&2; }
die()  { printf '[%s %(%H:%M:%S)T] ERROR: %s\n' "$_libcgi_prog" -1 "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "$1 needs root (debootstrap/apt-get); run as root"
}

# Compose: the v2 plugin (`docker compose`) where it exists, else the
# standalone `docker-compose` (Debian 12 ships 1.29, which knows profiles).
# Sets the COMPOSE array; call once.
detect_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' found (apt-get install docker-compose)"
    fi
    # We build images ourselves with `docker build`; compose only runs them.
    # compose 1.29 would otherwise hand builds to BuildKit, which needs the
    # buildx plugin that Debian's docker.io lacks.
    export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
}

# The legacy builder prints a deprecation banner on newer clients; keep it
# from drowning the log but keep real errors.
# LIBCGI_BUILD_NETWORK (e.g. "none") is passed as --network to every build:
# it exists to exercise the no-network fallback of build-base.sh.
docker_build() {
    DOCKER_BUILDKIT=0 docker build ${LIBCGI_BUILD_NETWORK:+--network="$LIBCGI_BUILD_NETWORK"} "$@" 2> >(sed -u '/DEPRECATED: The legacy builder/,/^[[:space:]]*$/d' >&2)
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

image_label() { # image label-key
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# Poll a container's health status until healthy; fail fast when it exits
# or turns unhealthy, or after a deadline (seconds).
wait_healthy() { # container-id deadline-seconds
    local cid=$1 deadline=$((SECONDS + $2)) state health
    while :; do
        state=$(docker inspect -f '{{.State.Status}}' "$cid" 2>/dev/null) || die "container $cid vanished"
        health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$cid")
        case $state/$health in
            running/healthy) return 0 ;;
            running/unhealthy)
                docker logs --tail 50 "$cid" >&2 || true
                die "container $cid is unhealthy" ;;
            running/*) ;;
            *)
                docker logs --tail 50 "$cid" >&2 || true
                die "container $cid is $state, not running" ;;
        esac
        ((SECONDS < deadline)) || { docker logs --tail 50 "$cid" >&2 || true; die "container $cid not healthy after $2 s (health: $health)"; }
        sleep 0.5 # poll interval, not synchronisation
    done
}

# GET a URL on 127.0.0.1 with bash alone (no curl on a fresh host).  Prints
# the status line's code to stdout and the body to the file given.
http_get() { # host port path body-file
    local host=$1 port=$2 path=$3 out=$4 line code
    exec {fd}<>"/dev/tcp/$host/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&"$fd"
    IFS= read -r -t 10 line <&"$fd" || { exec {fd}>&-; return 1; }
    code=$(awk '{print $2}' <<<"$line")
    # Skip headers up to the blank line, keep the body.
    while IFS= read -r -t 10 line <&"$fd"; do
        [[ $line == $'\r' || -z $line ]] && break
    done
    timeout 10 cat <&"$fd" >"$out" || { exec {fd}>&-; return 1; }
    exec {fd}>&-
    printf '%s\n' "$code"
}
