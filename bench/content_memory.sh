#!/usr/bin/env bash
# content_memory.sh - memory of the content stage under load: CONNECTIONS
# clients each send one SIZE message at the same time (mxgate-load, a
# connection per message) through build/mxgate with content_scanner =
# rspamd (Debian's, started here; its DNS on an unbound started here) into
# mxgate-load's sink. Run once per content_memory_limit in LIMITS.
#
# Reports, per limit: messages accepted and refused 452 4.3.1 (the
# budget), mxgate's peak RSS (VmHWM) and its RSS before the load, the
# largest mxgate_content_held_bytes seen (sampled every 100 ms) against the
# budget (workers x limit), and the time.
#
# Each message holds a downstream connection from MAIL to its end (MAIL and
# RCPT are relayed before the body is read and scanned), so
# downstream_connections is set to CONNECTIONS here: with the default 8 per
# worker the rest would wait in the pool's queue.
#
# With SPILL (content_spill_limit, per worker) set, messages past the
# memory budget go to files under a spool_dir made here instead of being
# refused; the report adds the octets spilled at most and the process's
# anonymous and file-backed RSS at the end.
#
# Usage: bash bench/content_memory.sh   (env: CONNECTIONS=200 SIZE=2m
#        WORKERS=2 LIMITS="128m 1g" SPILL=0 MXGATE=build/mxgate)
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
LOAD=${LOAD:-build/mxgate-load}
CONNECTIONS=${CONNECTIONS:-200}
SIZE=${SIZE:-2m}
WORKERS=${WORKERS:-2}
LIMITS=${LIMITS:-128m 1g}
SPILL=${SPILL:-0}     # content_spill_limit: 0, messages past the memory budget are refused
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
for b in "$MXGATE" "$LOAD" "$UNBOUND"; do
    [ -x "$b" ] || { echo "content_memory: $b not found (make all)" >&2; exit 2; }
done
command -v rspamd > /dev/null || { echo "content_memory: rspamd not found" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-content-memory.XXXXXX")
chmod 755 "$work"
pids=""
. bench/common.sh

dp=$(free_port)
start_unbound "$dp" "$work"
rsp=$(free_port)
mkdir -p build/rspamd-bench-db
start_rspamd "$rsp" "$dp" "$work/rspamd" "$(pwd)/build/rspamd-bench-db" || exit 1

sp=$(free_port)
"$LOAD" sink --listen "127.0.0.1:$sp" --count-file "$work/sink.json" --quiet > "$work/sink.log" 2>&1 &
pids="$pids $!"
wait_port "$sp" 10

metric() { # port name -> value
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}
kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$2/status"; }

echo "content_memory: $CONNECTIONS concurrent messages of $SIZE, workers=$WORKERS, rspamd on 127.0.0.1:$rsp"
for limit in $LIMITS; do
    mp=$(free_port)
    hp=$(free_port)
    "$MXGATE" --listen "127.0.0.1:$mp" --downstream "127.0.0.1:$sp" --relay-domains example.com \
        --hostname mx.bench --workers "$WORKERS" --max-connections-per-ip 100000 --message-size-limit 64m \
        --downstream-connections "$CONNECTIONS" --downstream-queue-timeout 300 \
        --content-scanner rspamd --rspamd-url "http://127.0.0.1:$rsp" --rspamd-timeout 120 \
        --spool-dir "$work/spill" --content-spill-limit "$SPILL" \
        --content-memory-limit "$limit" --http-listen "127.0.0.1:$hp" --log-level info 2> "$work/mxgate-$limit.log" &
    pid=$!
    pids="$pids $pid"
    wait_port "$mp" 10 || { tail -20 "$work/mxgate-$limit.log" >&2; exit 1; }
    rss0=$(kib VmRSS "$pid")
    t0=$(now)
    "$LOAD" client --target "127.0.0.1:$mp" --connections "$CONNECTIONS" --messages "$CONNECTIONS" \
        --session per-message --size "$SIZE" --timeout 600 --reply-timeout 300 --quiet \
        --record "$work/client-$limit.txt" --json "$work/client-$limit.json" > /dev/null 2>&1 &
    cpid=$!
    peak_held=0 peak_spilled=0 peak_anon=0
    while kill -0 "$cpid" 2>/dev/null; do
        h=$(metric "$hp" mxgate_content_held_bytes)
        [ -n "$h" ] && [ "$h" -gt "$peak_held" ] && peak_held=$h
        h=$(metric "$hp" mxgate_content_spilled_bytes)
        [ -n "$h" ] && [ "$h" -gt "$peak_spilled" ] && peak_spilled=$h
        h=$(kib RssAnon "$pid")
        [ -n "$h" ] && [ "$h" -gt "$peak_anon" ] && peak_anon=$h
        sleep 0.1
    done
    wait "$cpid" || true
    t1=$(now)
    hwm=$(kib VmHWM "$pid")
    full=$(metric "$hp" mxgate_content_memory_full_total)
    ok=$(grep -c ' 250$' "$work/client-$limit.txt" || true)
    r452=$(grep -c ' 452$' "$work/client-$limit.txt" || true)
    other=$(($(wc -l < "$work/client-$limit.txt") - ok - r452))
    if [ "$other" -gt 0 ]; then
        echo "  other replies: $(awk '$2 != 250 && $2 != 452 { print $2 }' "$work/client-$limit.txt" | sort | uniq -c | tr '\n' ' ')"
        echo "  mxgate: $(grep -o 'content\.error=[a-z_]*\|result="[0-9]* [0-9.]*' "$work/mxgate-$limit.log" | sort | uniq -c | tr '\n' ' ')"
    fi
    stop_pid "$pid"
    budget=$(awk -v l="$limit" -v w="$WORKERS" 'BEGIN {
        m = l; u = substr(l, length(l)); n = l + 0
        if (u == "k") n *= 1024; else if (u == "m") n *= 1048576; else if (u == "g") n *= 1073741824
        printf "%d", n * w }')
    echo "limit $limit per worker (budget $((budget / 1048576)) MiB): $ok accepted, $r452 refused 452 4.3.1," \
        "$other other; peak held $((peak_held / 1048576)) MiB; mxgate RSS $((rss0 / 1024)) MiB before," \
        "peak $((hwm / 1024)) MiB (anonymous $((peak_anon / 1024)) MiB at most); spilled $((peak_spilled / 1048576)) MiB" \
        "at most; memory_full_total ${full:-?}; $(calc "$t1 - $t0" 1) s"
done
