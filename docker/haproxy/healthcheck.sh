#!/bin/bash
# HEALTHCHECK: HAProxy's monitor-uri on the stats listener answers 200 while
# the proxy runs.  It says nothing about the backends on purpose: the rig
# reads their state from the stats page instead.
set -euo pipefail
exec 3<>/dev/tcp/127.0.0.1/8404
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
[[ $status == "HTTP/1."?" 200 "* ]]
