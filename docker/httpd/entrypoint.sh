#!/bin/bash
# Container entrypoint: pick the MPM from $APACHE_MPM, then exec apache2 in
# the foreground as PID 1 (so `docker stop` signals reach it directly).
#
#   APACHE_MPM=event|prefork|worker   (default: event)
#
# Any arguments are passed to apache2 (e.g. `-t` to test the config, `-M`).
# A first argument that is not an option runs that command instead (handy:
# `docker run --rm IMAGE bash`).
set -euo pipefail

if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

mpm=${APACHE_MPM:-event}
case $mpm in
    event|prefork|worker) ;;
    *) echo "entrypoint: APACHE_MPM must be event, prefork or worker, not '$mpm'" >&2; exit 64 ;;
esac

# Exactly one MPM may be loaded.  a2enmod refuses to enable a second one, so
# disable all three first; both tools are idempotent and quiet with -q.
a2dismod -q -f mpm_event mpm_prefork mpm_worker >/dev/null
a2enmod -q "mpm_$mpm" >/dev/null
echo "entrypoint: MPM $mpm" >&2

# Debian keeps APACHE_RUN_USER, APACHE_RUN_DIR, APACHE_LOG_DIR... in envvars;
# apache2.conf refers to them, so they must be in the environment.
# envvars reads unset variables (APACHE_CONFDIR): relax -u while sourcing.
set +u
# shellcheck disable=SC1091
. /etc/apache2/envvars
set -u
# apache2ctl would create these; we exec apache2 directly (apache2ctl does not
# exec, which would leave bash as PID 1 swallowing signals).
mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR"
chown "$APACHE_RUN_USER" "$APACHE_LOCK_DIR"
# A pid file left by a killed container would stop a restart of the same one.
rm -f "$APACHE_PID_FILE"

exec /usr/sbin/apache2 -DFOREGROUND "$@"
