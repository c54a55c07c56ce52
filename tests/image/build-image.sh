#!/usr/bin/env bash
# make image: build deploy/Dockerfile as $IMAGE (default mxgate) with podman
# (preferred) or docker; see tests/image/engine.sh for which and how.
#
# Bases: debian:bookworm (build stage) and debian:bookworm-slim (runtime),
# pulled when a registry answers. When pulling fails and no copy is here,
# a Debian 12 base is made with debootstrap from the Debian mirror
# (DEBIAN_MIRROR, default http://deb.debian.org/debian), shaped like
# bookworm-slim (same apt sources, no docs, man pages or locales), cached as
# build/image/bookworm-base.tar and imported as localhost/bookworm-base; a
# later run reuses the image, or imports the cached tar, and never runs
# debootstrap again. BUILD_BASE=... BASE=... choose the bases yourself.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 2
. tests/image/engine.sh

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=${LOCAL_BASE:-localhost/bookworm-base}
BASE_TAR=$IMG_DIR/${LOCAL_BASE##*/}.tar
t0=$(date +%s)
since() { echo "$(( $(date +%s) - $1 ))s"; }

# ---- the bases
have() { eng image inspect "$1" >/dev/null 2>&1; }
pull_or_have() { # ref -> 0 when it is here afterwards
    if eng_t 300 pull -q "$1" >/dev/null 2>"$IMG_DIR/pull.err"; then
        echo "image: pulled $1"
        return 0
    fi
    if have "$1"; then
        echo "image: $1 not pulled ($(tail -1 "$IMG_DIR/pull.err")); using the copy here"
        return 0
    fi
    echo "image: $1 cannot be pulled: $(tail -1 "$IMG_DIR/pull.err")"
    return 1
}

umount_below() { # dir: what debootstrap may have left mounted (after a failure)
    local abs
    abs=$(realpath -m "$1")
    awk -v d="$abs/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

make_base_tar() {
    command -v debootstrap >/dev/null || { echo "image: debootstrap is not installed (make image installs it)" >&2; exit 2; }
    local root=$IMG_DIR/rootfs.tmp t
    t=$(date +%s)
    umount_below "$root"; rm -rf "$root"
    echo "image: no registry: making a Debian 12 base with debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (a few minutes, log in $IMG_DIR/debootstrap.log)"
    if ! timeout 1200 debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" \
            > "$IMG_DIR/debootstrap.log" 2>&1; then
        tail -20 "$IMG_DIR/debootstrap.log" >&2
        umount_below "$root"; rm -rf "$root"
        echo "image: debootstrap failed" >&2
        exit 1
    fi
    umount_below "$root"
    # As debian:bookworm-slim: its apt sources (updates and security too),
    # no docs, man pages or locales now or from later installs.
    local sec=${DEBIAN_MIRROR%/debian}/debian-security
    rm -f "$root/etc/apt/sources.list"
    cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* \
        "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/var/log/* "$root"/tmp/*
    : > "$root/etc/resolv.conf"; rm -f "$root/etc/hostname"
    tar -C "$root" --numeric-owner -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$root"
    echo "image: base rootfs cached as $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1), debootstrap $(since "$t"))"
}

local_base() {
    if have "$LOCAL_BASE"; then
        echo "image: reusing $LOCAL_BASE (made earlier; rootfs cached as $BASE_TAR)"
        return
    fi
    if [ -s "$BASE_TAR" ]; then
        echo "image: importing the cached base rootfs $BASE_TAR (no debootstrap)"
    else
        make_base_tar
    fi
    eng import -q \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' "$BASE_TAR" "$LOCAL_BASE" >/dev/null
    echo "image: imported $LOCAL_BASE"
}

build_args=()
if [ -n "${BASE:-}${BUILD_BASE:-}" ]; then
    build_args=(--build-arg "BASE=${BASE:-debian:bookworm-slim}" --build-arg "BUILD_BASE=${BUILD_BASE:-debian:bookworm}")
    echo "image: bases as given: BUILD_BASE=${BUILD_BASE:-debian:bookworm} BASE=${BASE:-debian:bookworm-slim}"
else
    # podman needs the registry in the name where no short-name alias is set up.
    if [ "$ENGINE" = podman ]; then reg=docker.io/library/; else reg=; fi
    if pull_or_have "${reg}debian:bookworm" && pull_or_have "${reg}debian:bookworm-slim"; then
        build_args=(--build-arg "BUILD_BASE=${reg}debian:bookworm" --build-arg "BASE=${reg}debian:bookworm-slim")
    else
        local_base
        build_args=(--build-arg "BUILD_BASE=$LOCAL_BASE" --build-arg "BASE=$LOCAL_BASE")
    fi
fi

# ---- the image
t=$(date +%s)
log=$IMG_DIR/build.log
if [ "$ENGINE" = podman ]; then
    # --format docker keeps HEALTHCHECK (the OCI format drops it); the build's
    # RUN steps reach the Debian mirror through the host's network.
    echo "image: $ENGINE_SHOWN build --format docker --network=host ${build_args[*]} -f deploy/Dockerfile -t $IMAGE ."
    set +e
    eng_t 1800 build --format docker --network=host "${ENGINE_ARGS[@]}" "${build_args[@]}" \
        -f deploy/Dockerfile -t "$IMAGE" . > "$log" 2>&1
    rc=$?
    set -e
else
    # The context goes to the daemon as a tar without build/ (objects and the
    # cached base), .git or mail/.
    echo "image: tar -c (the tree but build/ .git mail/) | docker build --network=host ${build_args[*]} -f deploy/Dockerfile -t $IMAGE -"
    set +e
    tar -c --exclude=./build --exclude=./.git --exclude=./mail . |
        timeout 1800 docker build --network=host "${build_args[@]}" -f deploy/Dockerfile -t "$IMAGE" - > "$log" 2>&1
    rc=$?
    set -e
fi
if [ "$rc" -ne 0 ]; then
    tail -30 "$log" >&2
    echo "image: build FAILED (exit $rc, full log in $log)" >&2
    exit 1
fi
size=$(eng image inspect --format '{{.Size}}' "$IMAGE")
echo "image: built $IMAGE with $ENGINE in $(since "$t") (log in $log); size $((size / 1000000)) MB ($size bytes); make image took $(since "$t0")"
