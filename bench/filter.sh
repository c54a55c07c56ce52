#!/usr/bin/env bash
# filter.sh - what a DNS-backed filter costs end to end: smtp-source ->
# build/mxgate -> smtp-sink with the filter (FILTER=spf or dnsbl) off and
# on, in the same run, alternating (off, on, off, on, ...) so drift on a
# shared machine hits both alike. smtp-source -d keeps each of its SESSIONS
# connections for many messages; PER_MESSAGE=1 opens a connection per
# message instead, so that every message pays the connect stage (the DNSBL
# lookups, the fleet's round trip to Redis) too.
#
# FILTER=spf, SPF on means a cached pass: the sender's domain publishes
# "v=spf1 ip4:127.0.0.1 -all" (TTL 3600) on an unbound started here on
# 127.0.0.1, mxgate asks only that server (--dns-server), and after the first
# message of each worker the result comes from the worker's cache. Every
# message still runs the chain, gets Received-SPF and Authentication-Results
# headers, and is logged with its result.
#
# FILTER=dnsbl: dnsbl_sites = "bl.example, wl.example*-5" and 127.0.0.1 is
# on both (TTL 3600): every connection asks both lists (the worker's
# libunbound answers from its cache after the first), scores 1 - 5 = -4,
# and is let through; every message's log line carries dnsbl=-4. The pass
# cache is off (pass_cache_ttl 0), so that every connection asks the lists:
# with it, a client that passed skips them.
#
# FILTER=fleet: the rate limits kept in Redis for a fleet (limits_redis):
# rate_connections, rate_messages and rate_recipients set far above the
# load in both runs, so "off" counts in the process only and "on" also
# takes every connection's, message's and recipient's token in a
# redis-server started here on 127.0.0.1 (one round trip before each
# greeting, the others pipelined without waiting).
#
# FILTER=content: the content stage (content_scanner = rspamd), with
# Debian's rspamd started here (its DNS pointed at the unbound above, one
# normal worker unless RSPAMD_WORKERS says more). "off" relays straight
# through; "on" holds each message, POSTs it to rspamd and relays it with
# rspamd's headers once it passes. rspamd's own CPU is reported apart from
# mxgate's. Fewer messages by default (MESSAGES=2000): rspamd scans a few
# hundred per second per worker here.
#
# Ends with lines for scripts (F is spf, dnsbl, fleet or content):
#   F_on_vs_off_ratio: R        msgs/s with the filter on / off
#                               (medians over ROUNDS rounds each)
#   F_cpu_per_msg_ratio: R      mxgate CPU per message, on / off (medians):
#                               steadier than wall time on a shared machine
#
# Usage: bash bench/filter.sh   (env: FILTER=spf|dnsbl|fleet PER_MESSAGE=0|1 MXGATE=path
#        MESSAGES=20000 SESSIONS=50 SIZE=4096 WORKERS=<nproc> ROUNDS=3)
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
MESSAGES_SET=${MESSAGES:-}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-4096}
WORKERS=${WORKERS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
PER_MESSAGE=${PER_MESSAGE:-0}
keep=-d
[ "$PER_MESSAGE" = 1 ] && keep=
RUN_LIMIT=${RUN_LIMIT:-300}
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
REDIS=${REDIS:-/usr/bin/redis-server}
FILTER=${FILTER:-spf}
off_args=()
case $FILTER in
spf) on_filters="limits, relay, spf"; on_args=(); logged='spf=pass' ;;
dnsbl) on_filters="limits, relay, dnsbl"; on_args=(--dnsbl-sites "bl.example, wl.example*-5" --pass-cache-ttl 0)
    logged='dnsbl=-4' ;;
content) on_filters="limits, relay"; logged='content='; MESSAGES=${MESSAGES_SET:-2000}
    on_args=() ;; # --content-scanner and --rspamd-url, once its port is known
fleet) on_filters="limits, relay"; logged='client=127.0.0.1'
    off_args=(--rate-connections 1000000 --rate-messages 1000000 --rate-recipients 1000000)
    on_args=("${off_args[@]}") ;; # and --limits-redis, once its port is known
*) echo "filter: FILTER is spf, dnsbl, fleet or content, not $FILTER" >&2; exit 2 ;;
esac

for b in "$MXGATE" "$SOURCE" "$SINK" "$UNBOUND"; do
    [ -x "$b" ] || { echo "$FILTER: $b not found or not executable" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-$FILTER.XXXXXX")
chmod 755 "$work"
pids=""
. bench/common.sh

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ---- the DNS server: unbound on 127.0.0.1, nothing resolved beyond it
dp=$(free_port)
start_unbound "$dp" "$work" 'src.test. 3600 IN TXT "v=spf1 ip4:127.0.0.1 -all"' \
    '1.0.0.127.bl.example. 3600 IN A 127.0.0.2' '1.0.0.127.wl.example. 3600 IN A 127.0.0.2'

# ---- Redis, for FILTER=fleet
if [ "$FILTER" = fleet ]; then
    [ -x "$REDIS" ] || { echo "fleet: $REDIS not found" >&2; exit 2; }
    rp=$(free_port)
    "$REDIS" --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
    pids="$pids $!"
    for _ in $(seq 100); do redis-cli -p "$rp" ping > /dev/null 2>&1 && break; sleep 0.1; done
    on_args+=(--limits-redis "127.0.0.1:$rp")
fi

# ---- rspamd, for FILTER=content
if [ "$FILTER" = content ]; then
    command -v rspamd > /dev/null || { echo "content: rspamd not found" >&2; exit 2; }
    rsp=$(free_port)
    mkdir -p build/rspamd-bench-db
    start_rspamd "$rsp" "$dp" "$work/rspamd" "$(pwd)/build/rspamd-bench-db" || exit 1
    # the hs_helper compiles on after the first answer: let it finish
    for _ in $(seq 120); do
        pgrep -f "rspamd: hs_helper" > /dev/null || break
        [ "$(ps -o etimes= -p "$rspamd_pid")" -gt 30 ] && break
        sleep 1
    done
    on_args+=(--content-scanner rspamd --rspamd-url "http://127.0.0.1:$rsp" --spool-dir "$work/spill")
fi

# ---- the downstream
sp=$(free_port)
start_sink "$sp" "$work/sink.out"

run() { # name filters [flags] -> "msgs/s cpu-ticks"
    local mp log
    mp=$(free_port)
    log="$work/mxgate-$1.log"
    "$MXGATE" --listen "127.0.0.1:$mp" --downstream "127.0.0.1:$sp" --relay-domains example.com \
        --hostname mx.bench --workers "$WORKERS" --max-connections 20000 --max-connections-per-ip 20000 \
        --filters "$2" --dns-server "127.0.0.1:$dp" "${@:3}" 2> "$log" &
    local pid=$!
    pids="$pids $pid"
    wait_port "$mp" 10 || { tail -20 "$log" >&2; exit 1; }
    local t0 t1 c0 c1 r0=0 r1=0
    c0=$(ticks "$pid")
    [ "$FILTER" = content ] && r0=$(tree_ticks "$rspamd_pid")
    t0=$(now)
    timeout "$RUN_LIMIT" "$SOURCE" $keep -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f sender@src.test -t user@example.com -M client.bench "127.0.0.1:$mp" \
        || { echo "$FILTER: smtp-source failed" >&2; tail -20 "$log" >&2; exit 1; }
    t1=$(now)
    c1=$(ticks "$pid")
    [ "$FILTER" = content ] && r1=$(tree_ticks "$rspamd_pid")
    kill -TERM "$pid"
    wait "$pid" || true
    local passed
    passed=$(grep -c "event=tx .*$logged" "$log" || true)
    if [ "$1" = on ] && [ "$passed" -lt "$MESSAGES" ]; then
        echo "$FILTER: only $passed of $MESSAGES messages logged $logged" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    echo "$(calc "$MESSAGES / ($t1 - $t0)" 0) $((c1 - c0)) $((r1 - r0))"
}

echo "$FILTER: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions (per message: $PER_MESSAGE), workers=$WORKERS, $ROUNDS rounds"
off_all="" on_all="" offc_all="" onc_all=""
for r in $(seq "$ROUNDS"); do
    read -r off offc _ < <(run off "limits, relay" "${off_args[@]}")
    read -r on onc onr < <(run on "$on_filters" "${on_args[@]}")
    echo "round $r: $FILTER off $off msg/s ($offc cpu ticks), $FILTER on $on msg/s ($onc cpu ticks)" \
        "$([ "$FILTER" = content ] && echo "; rspamd $onr ticks: $(calc "$onr * 1000 / $HZ / $MESSAGES" 3) ms/msg")"
    onr_all="${onr_all:-} $onr"
    off_all="$off_all $off" on_all="$on_all $on" offc_all="$offc_all $offc" onc_all="$onc_all $onc"
done
if [ "$FILTER" = fleet ]; then # every connection, MAIL and RCPT of the "on" runs reached Redis
    calls=$(redis-cli -p "$rp" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p')
    conns=$SESSIONS
    [ "$PER_MESSAGE" = 1 ] && conns=$MESSAGES
    echo "fleet: Redis ran the rate script ${calls:-0} times (each connection, MAIL and RCPT of the on runs)"
    [ "${calls:-0}" -ge $(((2 * MESSAGES + conns) * ROUNDS)) ] || { echo "fleet: Redis did not count every event" >&2; exit 1; }
fi
off_m=$(echo "$off_all" | median)
on_m=$(echo "$on_all" | median)
offc_m=$(echo "$offc_all" | median)
onc_m=$(echo "$onc_all" | median)
echo "median: $FILTER off $off_m msg/s, $offc_m ticks; $FILTER on $on_m msg/s, $onc_m ticks"
echo
echo "${FILTER}_on_vs_off_ratio: $(calc "$on_m / $off_m" 3)"
echo "${FILTER}_cpu_per_msg_ratio: $(calc "$onc_m / $offc_m" 3)"
if [ "$FILTER" = content ]; then # CPU per message in ms: mxgate off and on, rspamd (medians)
    echo "content_mxgate_cpu_ms_per_msg: off $(calc "$offc_m * 1000 / $HZ / $MESSAGES" 3) on $(calc "$onc_m * 1000 / $HZ / $MESSAGES" 3)"
    echo "content_rspamd_cpu_ms_per_msg: $(calc "$(echo "$onr_all" | median) * 1000 / $HZ / $MESSAGES" 3)"
fi
