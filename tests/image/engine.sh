# shellcheck shell=bash disable=SC2034  # ENGINE_SHOWN, ENGINE_CONF: read by the scripts that source this
# Sourced by build-image.sh and test-image.sh (from the repository root):
# picks the container engine and defines `eng` and `eng_t`, which run it.
#
#   podman when it is installed (preferred), else docker when its daemon
#   answers; ENGINE=docker or ENGINE=podman forces one.
#   podman runs with runc when runc is installed (crun, podman's default,
#   fails on machines whose container cannot set RLIMIT_NOFILE or whose
#   cgroups are in hybrid mode) and with a containers.conf of our own that
#   sets no default ulimits and no pids limit (PODMAN_RUNTIME=crun, or any
#   other, overrides the runtime).

IMAGE=${IMAGE:-mxgate}
IMG_DIR=${IMG_DIR:-build/image}
mkdir -p "$IMG_DIR"

if [ -z "${ENGINE:-}" ]; then
    if command -v podman >/dev/null 2>&1; then
        ENGINE=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        echo "image: neither podman nor a working docker here (make image installs podman)" >&2
        exit 2
    fi
fi

case $ENGINE in
podman)
    ENGINE_CONF=$PWD/$IMG_DIR/containers.conf
    printf '[containers]\ndefault_ulimits = []\npids_limit = 0\n' > "$ENGINE_CONF"
    ENGINE_ARGS=()
    if [ -n "${PODMAN_RUNTIME:-}" ]; then
        ENGINE_ARGS=(--runtime "$PODMAN_RUNTIME")
    elif command -v runc >/dev/null 2>&1; then
        ENGINE_ARGS=(--runtime runc)
    fi
    ENGINE_CMD=(env "CONTAINERS_CONF=$ENGINE_CONF" podman "${ENGINE_ARGS[@]}")
    # What `podman ... build` and `run` are given, to print and to document.
    ENGINE_SHOWN="CONTAINERS_CONF=$IMG_DIR/containers.conf podman ${ENGINE_ARGS[*]}"
    ;;
docker)
    ENGINE_CMD=(docker)
    ENGINE_SHOWN="docker"
    ;;
*)
    echo "image: ENGINE must be podman or docker, not '$ENGINE'" >&2
    exit 2
    ;;
esac

# eng ARGS...: the engine; eng_t SECONDS ARGS...: the same, bounded in time.
eng() { "${ENGINE_CMD[@]}" "$@"; }
eng_t() { local s=$1; shift; timeout "$s" "${ENGINE_CMD[@]}" "$@"; }
