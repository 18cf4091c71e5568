#!/usr/bin/env bash
# Make the local Debian bookworm base image the other images build FROM.
#
# No container registry is reachable on the project's machines, so
# `FROM debian:bookworm-slim` cannot work there.  This script:
#   1. reuses $LIBCGI_BASE_IMAGE (mod-libcgi/base:bookworm) if it already
#      exists with the same recipe label (no rebuild, no network);
#   2. else tries `docker pull debian:bookworm-slim` (short timeout) and
#      re-tags it;
#   3. else builds one with `debootstrap --variant=minbase` from the Debian
#      mirror this host's apt uses, and `docker import`s it.
# Then it checks whether RUN steps of `docker build` can reach that mirror
# (apt-get inside a build).  If they cannot, it also makes
# $LIBCGI_BASE_PKGS_IMAGE, a base with apache2 and haproxy already installed
# by debootstrap on the host, so the Dockerfiles' apt steps become no-ops.
#
# stdout: exactly one line, the image the Dockerfiles should build FROM.
# stderr: what it did and why.
#
# Options:
#   --force      rebuild even if a matching image exists
#   --no-pull    do not try the registry
#   --no-probe   skip the build-network probe (prints the plain base)
#   --pkgs       build/print the package-preloaded base regardless of probe
# Env: LIBCGI_DEBIAN_MIRROR overrides the mirror read from apt's sources.
#      LIBCGI_BUILD_NETWORK=none builds (and probes) without network, to
#      exercise the fallback.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

SUITE=bookworm
PULL_REF=debian:bookworm-slim
PULL_TIMEOUT=${LIBCGI_PULL_TIMEOUT:-20}
# Packages preloaded into the fallback image: what docker/Dockerfile and
# docker/haproxy/Dockerfile would otherwise apt-get install.
PRELOAD_PKGS=apache2,haproxy
# Bump when the way the rootfs is made changes, so old images get rebuilt.
RECIPE_VERSION=1
LABEL_RECIPE=org.mod-libcgi.base.recipe
LABEL_SOURCE=org.mod-libcgi.base.source

force=0 try_pull=1 probe=1 want_pkgs=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        --no-pull) try_pull=0 ;;
        --no-probe) probe=0 ;;
        --pkgs) want_pkgs=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $arg (see --help)" ;;
    esac
done

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running? are you root / in the docker group?)"

# --- which mirror does apt use here? ----------------------------------------
# Print the URIs of enabled 'deb' entries carrying suite $1, one-line
# (.list) and deb822 (.sources) formats.  apt itself ignores other names
# (e.g. *.disabled), so do we.
apt_uris_for_suite() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk -v s="$suite" '
            /^[ \t]*deb[ \t]/ { sub(/\[[^]]*\]/, ""); if ($3 == s) print $2 }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v s="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    split(line, kv, ":"); key = tolower(kv[1])
                    val = substr(line, index(line, ":") + 1)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites)
                if (enabled ~ /no/) next
                if ((" " types " ") !~ / deb /) next
                if ((" " suites " ") !~ (" " s " ")) next
                n = split(uris, u, /[ \t]+/)
                for (j = 1; j <= n; j++) if (u[j] != "") print u[j]
            }' "$f"
    done
}

# (sed, not head: head exiting early would SIGPIPE awk and fail under pipefail)
MIRROR=${LIBCGI_DEBIAN_MIRROR:-$(apt_uris_for_suite "$SUITE" | sed -n 1p)}
[[ -n $MIRROR ]] || die "no 'deb ... $SUITE' entry in /etc/apt/sources.list{,.d/*}; set LIBCGI_DEBIAN_MIRROR=http://your.mirror/debian"
SECURITY_MIRROR=$(apt_uris_for_suite "$SUITE-security" | sed -n 1p)
# The image gets the same suites the host has, so apt inside builds sees the
# same (security-updated) package versions.
SOURCES_LIST="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main"
[[ -n $SECURITY_MIRROR ]] && SOURCES_LIST+="
deb $SECURITY_MIRROR $SUITE-security main"

recipe_hash() { # include-list
    printf 'v%s|%s|minbase|%s|%s' "$RECIPE_VERSION" "$SUITE" "$1" "$SOURCES_LIST" | sha256sum | cut -c1-16
}
PULL_RECIPE=pull-$(printf '%s' "$PULL_REF" | sha256sum | cut -c1-16)

# --- building blocks ------------------------------------------------------------
# Remove a rootfs safely: debootstrap mounts /proc and /sys inside it and a
# failed run can leave them mounted; never let rm walk into those.
remove_rootfs() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    need_root "installing debootstrap"
    log "debootstrap missing: installing it with apt-get"
    # Refresh lists only if apt has none yet (fresh machine); keeps re-runs fast.
    if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } ||
        die "could not install debootstrap with apt-get"
}

# debootstrap a minbase rootfs (plus $2, comma list) and import it as $1.
debootstrap_image() { # tag include-list recipe
    local tag=$1 include=$2 recipe=$3 rootfs t0=$SECONDS
    need_root "debootstrap"
    ensure_debootstrap
    mkdir -p "$LIBCGI_WORK_DIR"
    rootfs="$LIBCGI_WORK_DIR/rootfs-$recipe"
    remove_rootfs "$rootfs"
    # shellcheck disable=SC2064 # expand now: the trap must remove this rootfs
    trap "remove_rootfs '$rootfs'" EXIT
    log "debootstrap --variant=minbase${include:+ --include=$include} $SUITE from $MIRROR (about a minute)"
    if ! debootstrap --variant=minbase ${include:+--include="$include"} \
            "$SUITE" "$rootfs" "$MIRROR" >"$LIBCGI_WORK_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$LIBCGI_WORK_DIR/debootstrap.log" >&2
        [[ -f $rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (full log: $LIBCGI_WORK_DIR/debootstrap.log)"
    fi

    # Make it behave like Docker's official slim image.
    printf '%s\n' "$SOURCES_LIST" >"$rootfs/etc/apt/sources.list"
    # Never start services from package scripts during image builds.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    # Keep docs, man pages and translations out of images (size).
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/debootstrap
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    # Docker bind-mounts these at run time; the host's copies do not belong.
    : >"$rootfs/etc/resolv.conf"
    echo localhost >"$rootfs/etc/hostname"

    log "docker import -> $tag"
    local imported
    imported=$(tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $SUITE $MIRROR" - )
    # `docker import --change` takes no LABEL; add the recipe labels with a
    # build that only writes metadata (no RUN, so no network needed).
    local previous
    previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    label_image "$imported" "$tag" "$recipe" "debootstrap"
    # A rebuild leaves the old image untagged: drop it (fails harmlessly if a
    # container or another tag still uses it).
    if [[ -n $previous && $previous != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    remove_rootfs "$rootfs"
    trap - EXIT
    log "built $tag by debootstrap in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

label_image() { # from tag recipe source
    docker_build -q -t "$2" - >/dev/null <<EOF
FROM $1
LABEL $LABEL_RECIPE="$3" $LABEL_SOURCE="$4"
EOF
}

# --- 1+2+3: the plain base ----------------------------------------------------
BASE_RECIPE=$(recipe_hash "")
have=$(image_label "$LIBCGI_BASE_IMAGE" "$LABEL_RECIPE")
if ((force == 0)) && [[ -n $have && ($have == "$BASE_RECIPE" || $have == "$PULL_RECIPE") ]]; then
    log "PATH TAKEN: reuse — $LIBCGI_BASE_IMAGE exists with recipe $have ($(image_label "$LIBCGI_BASE_IMAGE" "$LABEL_SOURCE")); not rebuilding"
else
    if ((force)); then
        log "--force: rebuilding $LIBCGI_BASE_IMAGE"
    elif [[ -n $have ]]; then
        log "$LIBCGI_BASE_IMAGE exists with another recipe ($have); rebuilding"
    fi
    pulled=0
    if ((try_pull)); then
        log "trying docker pull $PULL_REF (timeout ${PULL_TIMEOUT}s)"
        if err=$(timeout "$PULL_TIMEOUT" docker pull -q "$PULL_REF" 2>&1 >/dev/null); then
            pulled=1
        else
            log "pull failed: ${err:-timed out after ${PULL_TIMEOUT}s}"
        fi
    fi
    if ((pulled)); then
        label_image "$PULL_REF" "$LIBCGI_BASE_IMAGE" "$PULL_RECIPE" "pulled $PULL_REF"
        log "PATH TAKEN: pull — tagged $PULL_REF as $LIBCGI_BASE_IMAGE"
    else
        log "PATH TAKEN: debootstrap — registry unreachable, building $LIBCGI_BASE_IMAGE locally"
        debootstrap_image "$LIBCGI_BASE_IMAGE" "" "$BASE_RECIPE"
    fi
fi

# --- can RUN steps of docker build reach the mirror? -----------------------------
# The runtime and haproxy images apt-get install their packages in RUN steps.
# That needs network from build containers (default bridge + DNS); probe it
# with the real thing: apt-get update inside a throwaway build.
build_net_ok() {
    local out id
    out=$(DOCKER_BUILDKIT=0 timeout 180 docker build ${LIBCGI_BUILD_NETWORK:+--network="$LIBCGI_BUILD_NETWORK"} \
        --no-cache --force-rm -q - 2>&1 <<EOF
FROM $LIBCGI_BASE_IMAGE
RUN apt-get -o Acquire::Retries=1 -o Acquire::http::Timeout=20 -qq update && apt-cache show apache2 haproxy >/dev/null
EOF
    ) || { log "probe build output: $(tail -n 3 <<<"$out" | tr '\n' ' ')"; return 1; }
    id=$(tail -n1 <<<"$out")
    [[ $id == sha256:* ]] && docker image rm "$id" >/dev/null 2>&1
    return 0
}

use_pkgs=$want_pkgs
if ((probe && !want_pkgs)); then
    t0=$SECONDS
    if build_net_ok; then
        log "BUILD NETWORK: RUN steps of docker build reach $MIRROR (probe took $((SECONDS - t0)) s): Dockerfiles install packages with apt-get"
    else
        log "BUILD NETWORK: RUN steps of docker build CANNOT reach the mirror: preloading packages with debootstrap on the host instead"
        use_pkgs=1
    fi
fi

if ((use_pkgs)); then
    PKGS_RECIPE=$(recipe_hash "$PRELOAD_PKGS")
    have=$(image_label "$LIBCGI_BASE_PKGS_IMAGE" "$LABEL_RECIPE")
    if ((force == 0)) && [[ $have == "$PKGS_RECIPE" ]]; then
        log "reuse — $LIBCGI_BASE_PKGS_IMAGE exists with recipe $have"
    else
        debootstrap_image "$LIBCGI_BASE_PKGS_IMAGE" "$PRELOAD_PKGS" "$PKGS_RECIPE"
    fi
    echo "$LIBCGI_BASE_PKGS_IMAGE"
else
    echo "$LIBCGI_BASE_IMAGE"
fi
