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
