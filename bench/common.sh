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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
# utime + stime of a process (all threads), in clock ticks; fields after "(comm) ".
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
HZ=$(getconf CLK_TCK)
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }

wait_port() { # port seconds: until it greets with 220
    python3 - "$1" "$2" <<'PY'
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit("port %d not greeting within %.0f s" % (port, limit))
PY
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}
