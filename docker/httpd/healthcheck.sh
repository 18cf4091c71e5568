#!/bin/bash
# HEALTHCHECK: GET a LibCGI script over loopback with bash's /dev/tcp (no
# curl in the image) and require a 200.  Checking a script, not a static
# file, means "healthy" covers the module actually serving requests.
#   LIBCGI_HEALTH_PATH   path to request (default /libcgi-bin/hello.so)
set -euo pipefail
path=${LIBCGI_HEALTH_PATH:-/libcgi-bin/hello.so}

exec 3<>/dev/tcp/127.0.0.1/80
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: healthcheck\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || { echo "no response"; exit 1; }
case $status in
    "HTTP/1."?" 200 "*) exit 0 ;;
    *) echo "unhealthy: $status"; exit 1 ;;
esac
