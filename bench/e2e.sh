#!/usr/bin/env bash
# e2e.sh - end-to-end throughput and memory of the real gateway.
#
#   1. ceiling:  smtp-source -> smtp-sink                    (Postfix's tools)
#   2. gateway:  smtp-source -> build/mxgate -> smtp-sink    (relay-through)
#      both with 4 KiB messages, 50 parallel persistent sessions (-d), 20 000
#      messages; wall time, mxgate's and smtp-sink's CPU seconds
#      (utime + stime from /proc/PID/stat, before and after each run).
#   3. memory:   bench/idle.py opens 10 000 idle sessions to a fresh mxgate and
#      reads its VmRSS before and after.
#
# Ends with three lines for scripts:
#   e2e_ratio: R                  gateway msgs/s / direct msgs/s
#   cpu_per_msg_ratio: R          mxgate CPU per message / smtp-sink CPU per
#                                 message in the direct run (a minimal server)
#   rss_per_idle_conn_bytes: N
#
# Usage: bash bench/e2e.sh   (env: MXGATE=path MESSAGES=20000 SESSIONS=50
#        SIZE=4096 WORKERS=<nproc> IDLE_CONNS=10000 LOG_LEVEL=info)
# Everything listens on 127.0.0.1, every step has a time limit, and every
# process started here is stopped here (by its PID).
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-4096}
WORKERS=${WORKERS:-$(nproc)}
IDLE_CONNS=${IDLE_CONNS:-10000}
LOG_LEVEL=${LOG_LEVEL:-info}
RUN_LIMIT=${RUN_LIMIT:-300}      # seconds per smtp-source run
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}

for b in "$MXGATE" "$SOURCE" "$SINK"; do
    [ -x "$b" ] || { echo "e2e: $b not found or not executable" >&2; exit 2; }
done

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-e2e.XXXXXX")
pids=""
. bench/common.sh


sink_messages() { tr '\r' '\n' < "$1" | grep -Eo 'mesg=[0-9]+' | tail -1 | cut -d= -f2; }

start_mxgate() { # port downstream_port logfile extra-flags... -> sets mx_pid
    local port=$1 ds=$2 log=$3
    shift 3
    "$MXGATE" --listen "127.0.0.1:$port" --downstream "127.0.0.1:$ds" \
        --relay-domains example.com --hostname mx.bench --workers "$WORKERS" \
        --max-connections 20000 --max-connections-per-ip 20000 --log-level "$LOG_LEVEL" \
        "$@" 2> "$log" &
    mx_pid=$!
    pids="$pids $mx_pid"
    if ! wait_port "$port" 10; then tail -20 "$log" >&2; exit 1; fi
}
stop_mxgate() { # pid log
    kill -TERM "$1"
    local rc=0
    for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    wait "$1" || rc=$?
    [ "$rc" -eq 0 ] || echo "e2e: mxgate exited $rc after SIGTERM" >&2
}

source_run() { # port -> exit status of smtp-source
    timeout "$RUN_LIMIT" "$SOURCE" -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f sender@src.test -t user@example.com -M client.bench "127.0.0.1:$1"
}

echo "e2e: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, mxgate workers=$WORKERS, $(nproc) CPUs"

# ---- 1. the ceiling: smtp-source -> smtp-sink
sp=$(free_port)
start_sink "$sp" "$work/sink1.out"
s0=$(ticks "$sink_pid"); t0=$(now)
source_run "$sp" || { echo "e2e: smtp-source -> smtp-sink failed" >&2; exit 1; }
t1=$(now); s1=$(ticks "$sink_pid")
sleep 0.2
got1=$(sink_messages "$work/sink1.out"); got1=${got1:-0}
stop_pid "$sink_pid"
direct_wall=$(calc "$t1 - $t0")
direct_rate=$(calc "$MESSAGES / $direct_wall" 0)
direct_sink_cpu=$(calc "($s1 - $s0) / $HZ" 2)

# ---- 2. through the gateway: smtp-source -> mxgate -> smtp-sink
sp=$(free_port); mp=$(free_port)
start_sink "$sp" "$work/sink2.out"
start_mxgate "$mp" "$sp" "$work/mxgate.log"
m0=$(ticks "$mx_pid"); s0=$(ticks "$sink_pid"); t0=$(now)
if ! source_run "$mp"; then
    echo "e2e: smtp-source -> mxgate failed; mxgate log tail:" >&2
    tail -20 "$work/mxgate.log" >&2
    exit 1
fi
t1=$(now); m1=$(ticks "$mx_pid"); s1=$(ticks "$sink_pid")
sleep 0.2
got2=$(sink_messages "$work/sink2.out"); got2=${got2:-0}
stop_mxgate "$mx_pid"
stop_pid "$sink_pid"
gw_wall=$(calc "$t1 - $t0")
gw_rate=$(calc "$MESSAGES / $gw_wall" 0)
gw_cpu=$(calc "($m1 - $m0) / $HZ" 2)
gw_sink_cpu=$(calc "($s1 - $s0) / $HZ" 2)

for g in "$got1" "$got2"; do
    [ "$g" -eq "$MESSAGES" ] || echo "e2e: WARNING: smtp-sink counted $g messages, expected $MESSAGES" >&2
done

mx_cpu_k=$(calc "$gw_cpu * 1000 / $MESSAGES" 4)
sink_cpu_k=$(calc "$direct_sink_cpu * 1000 / $MESSAGES" 4)
gw_sink_cpu_k=$(calc "$gw_sink_cpu * 1000 / $MESSAGES" 4)

echo
printf '%-34s %10s msg/s  %7.2f s wall  smtp-sink cpu %6.2f s  (sink counted %s)\n' \
    "direct  smtp-source -> smtp-sink:" "$direct_rate" "$direct_wall" "$direct_sink_cpu" "$got1"
printf '%-34s %10s msg/s  %7.2f s wall  smtp-sink cpu %6.2f s  mxgate cpu %6.2f s  (sink counted %s)\n' \
    "gateway smtp-source -> mxgate:" "$gw_rate" "$gw_wall" "$gw_sink_cpu" "$gw_cpu" "$got2"
echo "mxgate cpu s per 1000 msgs:        $mx_cpu_k"
echo "smtp-sink cpu s per 1000 msgs:     $sink_cpu_k (direct run), $gw_sink_cpu_k (behind mxgate)"

e2e_ratio=$(calc "$direct_wall / $gw_wall" 3)   # = gateway msgs/s / direct msgs/s
if [ "$(calc "$direct_sink_cpu > 0" 0)" = 1 ]; then
    cpu_ratio=$(calc "$gw_cpu / $direct_sink_cpu" 2)
else
    cpu_ratio=nan
fi

# ---- 3. memory per idle session (a fresh gateway)
sp=$(free_port); mp=$(free_port)
start_sink "$sp" "$work/sink3.out"
start_mxgate "$mp" "$sp" "$work/mxgate-idle.log" --command-timeout 600
idle_out="$work/idle.out"
if timeout 180 python3 bench/idle.py --port "$mp" --pid "$mx_pid" -n "$IDLE_CONNS" --hold 2 --limit 150 \
        > "$idle_out"; then :; else echo "e2e: idle.py failed (exit $?)" >&2; fi
cat "$idle_out"
rss=$(grep -E '^rss_per_idle_conn_bytes:' "$idle_out" | awk '{ print $2 }')
rss=${rss:-nan}
stop_mxgate "$mx_pid"
stop_pid "$sink_pid"

echo
echo "e2e_ratio: $e2e_ratio"
echo "cpu_per_msg_ratio: $cpu_ratio"
echo "rss_per_idle_conn_bytes: $rss"
