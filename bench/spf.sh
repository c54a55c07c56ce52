#!/usr/bin/env bash
# spf.sh - what SPF costs end to end: smtp-source -> build/mxgate -> smtp-sink
# with the filter chain's SPF off and on, in the same run, alternating
# (off, on, off, on, ...) so drift on a shared machine hits both alike.
#
# SPF on means a cached pass: the sender's domain publishes
# "v=spf1 ip4:127.0.0.1 -all" (TTL 3600) on an unbound started here on
# 127.0.0.1, mxgate asks only that server (--dns-server), and after the first
# message of each worker the result comes from the worker's cache. Every
# message still runs the chain, gets Received-SPF and Authentication-Results
# headers, and is logged with its result.
#
# Ends with lines for scripts:
#   spf_on_vs_off_ratio: R      msgs/s with SPF on / msgs/s with SPF off
#                               (medians over ROUNDS rounds each)
#   spf_cpu_per_msg_ratio: R    mxgate CPU per message, on / off (medians):
#                               steadier than wall time on a shared machine
#
# Usage: bash bench/spf.sh   (env: MXGATE=path MESSAGES=20000 SESSIONS=50
#        SIZE=4096 WORKERS=<nproc> ROUNDS=3)
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-4096}
WORKERS=${WORKERS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
RUN_LIMIT=${RUN_LIMIT:-300}
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}

for b in "$MXGATE" "$SOURCE" "$SINK" "$UNBOUND"; do
    [ -x "$b" ] || { echo "spf: $b not found or not executable" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-spf.XXXXXX")
chmod 755 "$work"
pids=""
. bench/common.sh

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ---- the DNS server: unbound on 127.0.0.1, nothing resolved beyond it
dp=$(free_port)
cat > "$work/unbound.conf" <<CONF
server:
    interface: 127.0.0.1
    port: $dp
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$work"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    do-ip6: no
    local-zone: "." static
    local-data: 'src.test. 3600 IN TXT "v=spf1 ip4:127.0.0.1 -all"'
CONF
"$UNBOUND" -d -c "$work/unbound.conf" > "$work/unbound.log" 2>&1 &
pids="$pids $!"
sleep 0.5

# ---- the downstream
sp=$(free_port)
start_sink "$sp" "$work/sink.out"

run() { # name filters -> "msgs/s cpu-ticks"
    local mp log
    mp=$(free_port)
    log="$work/mxgate-$1.log"
    "$MXGATE" --listen "127.0.0.1:$mp" --downstream "127.0.0.1:$sp" --relay-domains example.com \
        --hostname mx.bench --workers "$WORKERS" --max-connections 20000 --max-connections-per-ip 20000 \
        --filters "$2" --dns-server "127.0.0.1:$dp" 2> "$log" &
    local pid=$!
    pids="$pids $pid"
    wait_port "$mp" 10 || { tail -20 "$log" >&2; exit 1; }
    local t0 t1 c0 c1
    c0=$(ticks "$pid")
    t0=$(now)
    timeout "$RUN_LIMIT" "$SOURCE" -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f sender@src.test -t user@example.com -M client.bench "127.0.0.1:$mp" \
        || { echo "spf: smtp-source failed" >&2; tail -20 "$log" >&2; exit 1; }
    t1=$(now)
    c1=$(ticks "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    local passed
    passed=$(grep -c 'event=tx .*spf=pass' "$log" || true)
    if [ "$1" = on ] && [ "$passed" -lt "$MESSAGES" ]; then
        echo "spf: only $passed of $MESSAGES messages logged spf=pass" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    echo "$(calc "$MESSAGES / ($t1 - $t0)" 0) $((c1 - c0))"
}

echo "spf: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, workers=$WORKERS, $ROUNDS rounds"
off_all="" on_all="" offc_all="" onc_all=""
for r in $(seq "$ROUNDS"); do
    read -r off offc < <(run off "limits, relay")
    read -r on onc < <(run on "limits, relay, spf")
    echo "round $r: SPF off $off msg/s ($offc cpu ticks), SPF on (cached pass) $on msg/s ($onc cpu ticks)"
    off_all="$off_all $off" on_all="$on_all $on" offc_all="$offc_all $offc" onc_all="$onc_all $onc"
done
off_m=$(echo "$off_all" | median)
on_m=$(echo "$on_all" | median)
offc_m=$(echo "$offc_all" | median)
onc_m=$(echo "$onc_all" | median)
echo "median: SPF off $off_m msg/s, $offc_m ticks; SPF on $on_m msg/s, $onc_m ticks"
echo
echo "spf_on_vs_off_ratio: $(calc "$on_m / $off_m" 3)"
echo "spf_cpu_per_msg_ratio: $(calc "$onc_m / $offc_m" 3)"
