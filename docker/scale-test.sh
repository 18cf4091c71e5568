#!/usr/bin/env bash
# Scale-out test: three httpd replicas behind HAProxy (compose profile
# "scale"); a bounded GET load through the balancer on 127.0.0.1; one replica
# is `docker stop`ped midway.  Every request must get 200 with the exact
# expected body.  Reports requests, errors, and how long HAProxy took to
# take the stopped replica out (from its stats page).
#
# Needs the images (docker/build-images.sh).  Cleans up everything it
# created (compose down -v --remove-orphans) on any exit.
#
# Env (defaults):
#   LIBCGI_SCALE_PROJECT   compose project name   (libcgi-scale-$$)
#   LIBCGI_SCALE_REQUESTS  3000     LIBCGI_SCALE_CONCURRENCY  8
#   LIBCGI_SCALE_RATE      250 req/s (0 = unpaced)  LIBCGI_SCALE_DEADLINE 120 s
#   LIBCGI_SCALE_PATH      /libcgi-bin/hello.so
#   LIBCGI_SCALE_EXPECT    exact body; default "Hello from mod_libcgi\n"
#                          (examples/hello.c's output: change both together)
#   LIBCGI_SCALE_VICTIM    httpd-b
#   APACHE_MPM             MPM of the replicas (event)
#   LIBCGI_SCALE_JSON      write the JSON report there too
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
detect_compose

PROJECT=${LIBCGI_SCALE_PROJECT:-libcgi-scale-$$}
COMPOSE_FILE=$LIBCGI_DOCKER_DIR/compose.yml
VICTIM=${LIBCGI_SCALE_VICTIM:-httpd-b}
SCALE_PATH=${LIBCGI_SCALE_PATH:-/libcgi-bin/hello.so}
EXPECT=${LIBCGI_SCALE_EXPECT:-$'Hello from mod_libcgi\n'}
export APACHE_MPM=${APACHE_MPM:-event}

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" --profile scale "$@"; }

for img in "$LIBCGI_HTTPD_IMAGE" "$LIBCGI_HAPROXY_IMAGE"; do
    image_exists "$img" || die "image $img missing: run docker/build-images.sh first"
done
command -v python3 >/dev/null || die "python3 is needed for the load generator"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0)); then
        log "failed (rc $rc): last haproxy log lines:"
        dc logs --no-color --tail 30 haproxy >&2 2>/dev/null || true
    fi
    log "cleaning up project $PROJECT"
    dc down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || warn "compose down failed"
    # Belt and braces: anything still labelled with our project goes too.
    local ids kind
    local -A list=([container]="ps -aq" [network]="network ls -q" [volume]="volume ls -q")
    local -A remove=([container]="rm -f" [network]="network rm" [volume]="volume rm -f")
    for kind in container network volume; do
        # shellcheck disable=SC2086 # the command words are split on purpose
        mapfile -t ids < <(docker ${list[$kind]} --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
        # shellcheck disable=SC2086
        ((${#ids[@]} == 0)) || docker ${remove[$kind]} "${ids[@]}" >/dev/null 2>&1 || warn "could not remove ${kind}s: ${ids[*]}"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "project $PROJECT: starting httpd-a httpd-b httpd-c + haproxy (MPM $APACHE_MPM)"
dc up -d httpd-a httpd-b httpd-c haproxy >&2

cid_of() { dc ps -q "$1"; }
for svc in httpd-a httpd-b httpd-c haproxy; do
    cid=$(cid_of "$svc")
    [[ -n $cid ]] || die "no container for $svc"
    wait_healthy "$cid" 60
done

# Published ports look like 127.0.0.1:49153.
lb=$(dc port haproxy 80 | tail -n1)
stats=$(dc port haproxy 8404 | tail -n1)
[[ $lb == 127.0.0.1:* && $stats == 127.0.0.1:* ]] || die "haproxy ports not on 127.0.0.1: '$lb' '$stats'"

# Healthy containers are not enough: wait until HAProxy's own checks see all
# three servers UP, or the first requests would measure its start-up.
deadline=$((SECONDS + 30))
while :; do
    up=$(python3 - "http://$stats/stats;csv" <<'EOF' 2>/dev/null || echo 0
import csv, io, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().lstrip("# ")
rows = csv.DictReader(io.StringIO(text))
print(sum(1 for r in rows if r["pxname"] == "libcgi" and r["svname"] != "BACKEND" and r["status"] == "UP"))
EOF
)
    [[ $up == 3 ]] && break
    ((SECONDS < deadline)) || die "HAProxy sees only $up of 3 servers UP after 30 s"
    sleep 0.2 # poll interval
done
log "balancer on $lb, stats on http://$stats/stats; all 3 replicas UP"

victim_cid=$(cid_of "$VICTIM")
[[ -n $victim_cid ]] || die "no container for victim $VICTIM"

log "load: ${LIBCGI_SCALE_REQUESTS:-3000} GETs of $SCALE_PATH, ${LIBCGI_SCALE_CONCURRENCY:-8} clients, ${LIBCGI_SCALE_RATE:-250} req/s; docker stop $VICTIM at half-way"
python3 "$LIBCGI_DOCKER_DIR/scale_load.py" \
    --url "http://$lb$SCALE_PATH" \
    --expect-body "$EXPECT" \
    --requests "${LIBCGI_SCALE_REQUESTS:-3000}" \
    --concurrency "${LIBCGI_SCALE_CONCURRENCY:-8}" \
    --rate "${LIBCGI_SCALE_RATE:-250}" \
    --deadline "${LIBCGI_SCALE_DEADLINE:-120}" \
    --stats-url "http://$stats/stats;csv" \
    --victim "$VICTIM" \
    --stop-cmd "docker stop -t 10 $victim_cid" \
    ${LIBCGI_SCALE_JSON:+--json "$LIBCGI_SCALE_JSON"} ||
    die "scale-out test FAILED (report above)"

# HAProxy's own log line for the event, as a cross-check of the timing.
dc logs --no-color haproxy 2>/dev/null | grep -E "Server libcgi/$VICTIM is (DOWN|going DOWN)|$VICTIM.*(DOWN|MAINT)" | head -n 3 >&2 || true
log "scale-out test PASSED"
