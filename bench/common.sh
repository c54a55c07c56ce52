# common.sh - shell helpers shared by the end-to-end benchmarks (sourced).
#
# The caller sets `work` (a scratch directory) and `pids` (every process it
# starts, by PID); cleanup stops them all and removes the directory, and is
# installed on EXIT. Everything listens on 127.0.0.1.

stop_pids() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
}
cleanup() {
    stop_pids
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 bench/proc.py port; }
now() { date +%s.%N; }
# utime + stime of a process (all threads), in clock ticks; fields after "(comm) ".
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
HZ=$(getconf CLK_TCK)
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }

wait_port() { python3 bench/proc.py greet "$1" "$2"; } # port seconds: until it greets with 220

# smtp-sink counting on 127.0.0.1:PORT into LOGFILE (sets sink_pid; the
# caller sets SINK, its path). It insists on dropping privileges when
# started as root.
start_sink() { # port logfile -> sets sink_pid
    if [ "$(id -u)" -eq 0 ]; then set -- "$1" "$2" -u nobody; else set -- "$1" "$2"; fi
    local port=$1 out=$2
    shift 2
    "$SINK" "$@" -c -m 1024 "127.0.0.1:$port" 1024 > "$out" 2>&1 &
    sink_pid=$!
    pids="$pids $sink_pid"
    wait_port "$port" 10
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}

# rspamd (Debian's 3.4) on 127.0.0.1: its normal worker on PORT, its DNS
# pointed at DNSPORT (a server the caller started), its own configuration
# directory and run directory under DIR, its database in DBDIR (default
# DIR/db; keep one across runs to skip the compile). 127.0.0.1 is checked as
# an outside client would be (rspamd skips SPF, DMARC and more for local
# clients unless check_local). Sets rspamd_pid (the main process; its workers are its
# children). Waits for /ping.
start_rspamd() { # port dnsport dir [dbdir]
    local port=$1 dnsport=$2 dir=$3 db=${4:-$3/db}
    mkdir -p "$dir/local/local.d" "$dir/local/override.d" "$db" "$dir/run" "$dir/log"
    local d=$dir/local/local.d o=$dir/local/override.d
    # override.d: bind_socket replaces rspamd.conf's localhost:1133x
    echo "bind_socket = \"127.0.0.1:$port\"; count = ${RSPAMD_WORKERS:-1};" > "$o/worker-normal.inc"
    echo "bind_socket = \"127.0.0.1:$(free_port)\";" > "$o/worker-controller.inc"
    echo 'enabled = false; count = 0;' > "$o/worker-proxy.inc"
    echo 'enabled = false; count = -1;' > "$o/worker-fuzzy.inc"
    echo 'local_addrs = [];' > "$o/options.inc"
    # loopback is always local to rspamd: check it as any client
    echo "dns { nameserver = [\"127.0.0.1:$dnsport\"]; timeout = 1s; retransmits = 1; }
check_local = true; check_authed = true;" > "$d/options.inc"
    echo 'type = "console"; level = "error";' > "$d/logging.inc"
    echo 'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "authentication-results", "x-spam-status", "x-spamd-bar"];
authenticated_headers = ["authentication-results"]; skip_local = false; skip_authenticated = false;' \
        > "$d/milter_headers.conf"
    # fuzzy_check resolves its servers with the system resolver: no network here
    echo 'enabled = false;' > "$d/fuzzy_check.conf"
    rspamd -f -u root -g root -c /etc/rspamd/rspamd.conf --var=LOCAL_CONFDIR="$dir/local" --var=DBDIR="$db" \
        --var=RUNDIR="$dir/run" --var=LOGDIR="$dir/log" > "$dir/rspamd.log" 2>&1 &
    rspamd_pid=$!
    pids="$pids $rspamd_pid"
    # A first start compiles rspamd's Hyperscan databases into DBDIR: minutes
    # on two busy cores; a later start with the same DBDIR takes seconds.
    for _ in $(seq 3000); do
        if curl -s "http://127.0.0.1:$port/ping" 2>/dev/null | grep -q pong; then
            printf 'From: a@src.test\r\nTo: user@example.com\r\nSubject: warm-up\r\n\r\nwarm-up\r\n' |
                curl -s -o /dev/null --data-binary @- "http://127.0.0.1:$port/checkv2" || true
            return 0
        fi
        sleep 0.1
    done
    echo "rspamd did not start" >&2
    tail -20 "$dir/rspamd.log" >&2
    return 1
}

# utime + stime of a process and its children (rspamd's workers).
tree_ticks() {
    local t=0 p
    for p in $1 $(pgrep -P "$1"); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done
    echo "$t"
}

# unbound on 127.0.0.1:PORT serving only the given local-data lines (the
# rest of the world is NXDOMAIN: nothing is resolved beyond it); its files
# under DIR. Adds its PID to pids.
start_unbound() { # port dir [local-data ...]
    local port=$1 dir=$2
    shift 2
    {
        printf 'server:\n    interface: 127.0.0.1\n    port: %s\n    do-daemonize: no\n    username: ""\n' "$port"
        printf '    chroot: ""\n    directory: "%s"\n    pidfile: ""\n    use-syslog: no\n    logfile: ""\n' "$dir"
        printf '    verbosity: 0\n    access-control: 127.0.0.0/8 allow\n    do-ip6: no\n    local-zone: "." static\n'
        for d in "$@"; do printf "    local-data: '%s'\n" "$d"; done
    } > "$dir/unbound.conf"
    "$UNBOUND" -d -c "$dir/unbound.conf" > "$dir/unbound.log" 2>&1 &
    pids="$pids $!"
    sleep 0.5
}
