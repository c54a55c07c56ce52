#!/usr/bin/env bash
# compare.sh - the same SMTP load through four paths, in one run:
#
#   1. direct   smtp-source -> smtp-sink                               (the ceiling)
#   2. mxgate   smtp-source -> build/mxgate -> smtp-sink               (relay-through)
#      mxspool  the same with delivery = spool: 250 after a group commit's fsync,
#               delivered from the spool (PATHS must name it; fsyncs per message
#               are read from its /metrics)
#      mxrts    the same with delivery = relay-then-spool (relayed through while the
#               sink answers; each body is also copied into its spool record)
#   3. postfix  smtp-source -> private Postfix instance -> smtp-sink   (store-and-forward)
#   4. haraka   smtp-source -> Haraka (queue/smtp_forward) -> smtp-sink (relay-through)
#
# Load: MESSAGES messages of SIZE bytes over SESSIONS parallel persistent
# sessions (smtp-source -d), one recipient in example.com each.  Before each
# measured run the same path gets WARMUP messages (not measured: JIT, process
# spawning, connection caches), and the measured run starts once smtp-sink has
# counted all of them.
#
# Time: from the start of smtp-source until smtp-sink (-c counters) has counted
# every message of the run.  For the relay-through paths that is when
# smtp-source ends; Postfix acknowledges once the message is in its queue (on
# disk, fsync) and delivers afterwards, so its time includes draining the queue
# (the "source_s" column shows when smtp-source itself was done).
#
# CPU: utime + stime (+ cutime + cstime, i.e. children already reaped) of the
# server's whole process tree, from /proc, just before and just after the run:
# mxgate: its process; postfix: master and all its children (smtpd, cleanup,
# qmgr, trivial-rewrite, smtp, postlogd, ...); haraka: the node process and its
# cluster workers; direct: smtp-sink itself.  smtp-sink's CPU in the relayed
# paths is shown separately and is not part of the server's figure.
#
# Ends with, for scripts:
#   PATH msgs_per_s=N cpu_s_per_1000=N ratio_to_ceiling=R     (one per path)
#   mxgate_vs_postfix_throughput: R      mxgate msgs/s / postfix msgs/s
#   mxgate_vs_haraka_throughput: R       mxgate msgs/s / haraka msgs/s
#   mxgate_vs_postfix_cpu_per_msg: R     postfix CPU/msg / mxgate CPU/msg (>1: mxgate cheaper)
#   mxgate_vs_haraka_cpu_per_msg: R      haraka CPU/msg / mxgate CPU/msg
# A path that cannot run here prints "PATH: unavailable (reason)" and its
# ratios print "n/a"; no number is ever made up.
#
# Servers as configured here: mxgate --workers MX_WORKERS --log-level warn,
# relaying to smtp-sink over its downstream pool.  Postfix: a throwaway
# instance made by bench/postfix.sh (config, queue and data directories under TMPDIR, so its queue
# fsyncs go to that file system; master.cf from /etc/postfix with chroot off
# and smtp on 127.0.0.1:PORT; relay_domains = example.com via
# transport_maps to relay:[127.0.0.1]:SINKPORT; connection cache on demand;
# default_process_limit = 120; logging through postlogd to a file), never
# the system instance.  Haraka: its shipped config plus smtp.ini listen/nodes,
# plugins rcpt_to.in_host_list and queue/smtp_forward only (one downstream
# connection per message, its design), log level warn.
#
# Haraka comes from the npm registry, installed once into bench/.haraka
# (git-ignored; HARAKA_VERSION, default 3.3.4).  It is run once per value in
# HARAKA_NODES (smtp.ini nodes=: 0 is one process, 2 is a cluster of two
# workers); the "haraka" summary line is the variant with the best throughput.
#
# Usage: bash bench/compare.sh   (env: MXGATE=build/mxgate MESSAGES=20000
#        SESSIONS=50 SIZE=4096 WARMUP=1000 MX_WORKERS=2 HARAKA_NODES="0 2"
#        RUN_LIMIT=120 DRAIN_LIMIT=120 PATHS="direct mxgate postfix haraka")
# Every server listens on 127.0.0.1 only, every step has a time limit, and
# every process started here is stopped here (by PID / process tree, and
# "postfix -c DIR stop" for the private Postfix); the temporary directory
# (Postfix queue and configuration, Haraka configuration, logs) is removed.
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-4096}
WARMUP=${WARMUP:-1000}
MX_WORKERS=${MX_WORKERS:-2}
HARAKA_NODES=${HARAKA_NODES:-0 2}
HARAKA_VERSION=${HARAKA_VERSION:-3.3.4}
HARAKA_DIR=${HARAKA_DIR:-bench/.haraka}
RUN_LIMIT=${RUN_LIMIT:-120}       # seconds per smtp-source run
DRAIN_LIMIT=${DRAIN_LIMIT:-120}   # seconds smtp-sink may lag behind smtp-source
PATHS=${PATHS:-direct mxgate postfix haraka}
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
POSTCONF=${POSTCONF:-/usr/sbin/postconf}
POSTQUEUE=${POSTQUEUE:-/usr/sbin/postqueue}

for b in "$SOURCE" "$SINK"; do
    [ -x "$b" ] || { echo "compare: $b not found or not executable" >&2; exit 2; }
done
case " $PATHS " in *" mxgate "*|*" mxspool "*|*" mxrts "*)
    [ -x "$MXGATE" ] || { echo "compare: $MXGATE not found (make build/mxgate)" >&2; exit 2; } ;;
esac

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-compare.XXXXXX")
chmod 755 "$work"            # Postfix's unprivileged daemons live below it
roots=""                     # PIDs whose whole process trees we own
pf_conf=""                   # a running private Postfix, if any

# ---- helpers (Python for /proc walking and counter polling)
py() { python3 bench/proc.py "$@"; }

kill_tree() { # ROOT... : TERM, then KILL after 5 s, every process in the trees
    local all p
    all=$(py tree "$@" 2>/dev/null || true)
    [ -n "$all" ] || return 0
    for p in $all; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        # shellcheck disable=SC2086
        [ -n "$(py alive $all)" ] || break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
stop_postfix() {
    [ -n "$pf_conf" ] || return 0
    local master=""
    [ -r "$work/pf/queue/pid/master.pid" ] && master=$(tr -d ' \n' < "$work/pf/queue/pid/master.pid")
    timeout 30 "$POSTFIX" -c "$pf_conf" stop >/dev/null 2>&1 || true
    if [ -n "$master" ]; then
        for _ in $(seq 50); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$master" 2>/dev/null && kill_tree "$master"
    fi
    pf_conf=""
}
cleanup() {
    stop_postfix
    # shellcheck disable=SC2086
    [ -z "$roots" ] || kill_tree $roots
    rm -rf "$work"
}
trap cleanup EXIT
. bench/postfix.sh
trap 'exit 130' INT TERM

HZ=$(getconf CLK_TCK)
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }
now() { date +%s.%N; }

start_sink() { # port out -> sink_pid
    local u=()
    # smtp-sink insists on dropping privileges when started as root.
    [ "$(id -u)" -ne 0 ] || u=(-u nobody)
    "$SINK" "${u[@]}" -c -m 1024 "127.0.0.1:$1" 1024 > "$2" 2>&1 &
    sink_pid=$!
    roots="$roots $sink_pid"
    py greet "$1" 10
}
forget() { # a stopped root PID
    local p keep=""
    for p in $roots; do [ "$p" = "$1" ] || keep="$keep $p"; done
    roots=$keep
}
stop_sink() {
    kill_tree "$sink_pid"
    forget "$sink_pid"
}

# Long steps run in the background with "wait", so that a signal to this script
# is acted on (cleanup) at once instead of after the step.
interruptible() { # command... -> its exit status
    local pid rc=0
    "$@" &
    pid=$!
    roots="$roots $pid"
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}
source_run() { # port count
    interruptible timeout "$RUN_LIMIT" "$SOURCE" -d -s "$SESSIONS" -m "$2" -l "$SIZE" \
        -f sender@src.test -t user@example.com -M client.bench "127.0.0.1:$1" \
        > "$work/source.out" 2>&1
}

# measure NAME PORT SINKOUT CPUROOTS... : warm-up, then the measured run.
# Sets r_rate r_wall r_src r_cpu r_sinkcpu r_got r_err.
measure() {
    local name=$1 port=$2 sinkout=$3
    shift 3
    r_err=""
    if [ "$WARMUP" -gt 0 ]; then
        if ! source_run "$port" "$WARMUP"; then
            r_err="warm-up smtp-source failed: $(tail -1 "$work/source.out")"; return 1
        fi
        if ! interruptible py wait "$sinkout" "$WARMUP" "$DRAIN_LIMIT" > /dev/null; then
            r_err="warm-up: smtp-sink counted $(py count "$sinkout") of $WARMUP"; return 1
        fi
    fi
    local base target c0 s0 t0 ts w c1 s1 rc=0 wpid
    base=$(py count "$sinkout")
    target=$((base + MESSAGES))
    # The watcher polls smtp-sink's counter from before the start, so that the
    # end time does not include starting a process.
    py wait "$sinkout" "$target" $((RUN_LIMIT + DRAIN_LIMIT)) > "$work/wait.out" &
    wpid=$!
    roots="$roots $wpid"
    c0=$(py ticks "$@"); s0=$(py ticks "$sink_pid")
    t0=$(now)
    source_run "$port" "$MESSAGES" || rc=$?
    ts=$(now)
    if [ "$rc" -ne 0 ]; then
        kill_tree "$wpid"; forget "$wpid"
        r_err="smtp-source exited $rc: $(tail -1 "$work/source.out")"; return 1
    fi
    # Whatever is left of the watcher's limit, but at least DRAIN_LIMIT.
    local waited=0
    while [ -n "$(py alive "$wpid")" ] && [ "$waited" -lt $((DRAIN_LIMIT * 10)) ]; do
        sleep 0.1; waited=$((waited + 1))
    done
    kill_tree "$wpid"
    wait "$wpid" 2>/dev/null || true
    forget "$wpid"
    w=$(cat "$work/wait.out")
    case $w in
    ""|timeout*)
        r_err="smtp-sink counted $(( $(py count "$sinkout") - base )) of $MESSAGES within ${DRAIN_LIMIT}s after smtp-source"
        return 1 ;;
    esac
    c1=$(py ticks "$@"); s1=$(py ticks "$sink_pid")
    local te=${w% *}
    r_got=$(( ${w#* } - base ))
    # Relay-through: the sink may hit the target a poll before smtp-source exits.
    [ "$(calc "$te < $ts" 0)" = 0 ] || te=$ts
    r_wall=$(calc "$te - $t0" 3)
    r_src=$(calc "$ts - $t0" 3)
    r_rate=$(calc "$MESSAGES / $r_wall" 0)
    r_cpu=$(calc "($c1 - $c0) / $HZ" 2)
    r_sinkcpu=$(calc "($s1 - $s0) / $HZ" 2)
    echo "compare: $name: $r_got messages in ${r_wall}s (smtp-source done after ${r_src}s), server cpu ${r_cpu}s, smtp-sink cpu ${r_sinkcpu}s" >&2
}

declare -A RATE WALL SRC CPU SINKCPU GOT NOTE
ORDER=""
record() { # name
    RATE[$1]=$r_rate; WALL[$1]=$r_wall; SRC[$1]=$r_src; CPU[$1]=$r_cpu
    SINKCPU[$1]=$r_sinkcpu; GOT[$1]=$r_got
    ORDER="$ORDER $1"
}
unavailable() { # name reason
    NOTE[$1]=$2
    ORDER="$ORDER $1"
    echo "compare: $1: unavailable ($2)" >&2
}

# Run a private copy, so that a rebuild of $MXGATE during the run does not matter.
case " $PATHS " in *" mxgate "*|*" mxspool "*|*" mxrts "*)
    cp "$MXGATE" "$work/mxgate"
    echo "compare: mxgate: $MXGATE ($(sha256sum "$MXGATE" | cut -c1-12), $(date -r "$MXGATE" '+%F %T'))" >&2 ;;
esac

echo "compare: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions (+$WARMUP warm-up per path), $(nproc) CPUs, $(uname -r)"

# ---- 1. direct: smtp-source -> smtp-sink
run_direct() {
    local sp
    sp=$(py port)
    start_sink "$sp" "$work/sink-direct.out"
    if measure direct "$sp" "$work/sink-direct.out" "$sink_pid"; then record direct
    else unavailable direct "$r_err"; fi
    stop_sink
}

# ---- 2. mxgate (name mxgate: relay-through; mxspool: delivery = spool)
run_mxgate() {
    local name=${1:-mxgate} sp mp hp mx rc=0 extra=()
    sp=$(py port); mp=$(py port); hp=$(py port)
    start_sink "$sp" "$work/sink-$name.out"
    [ "$name" = mxspool ] && extra=(--delivery spool --spool-dir "$work/spool" --http-listen "127.0.0.1:$hp")
    [ "$name" = mxrts ] && extra=(--delivery relay-then-spool --spool-dir "$work/spool-rts")
    "$work/mxgate" --listen "127.0.0.1:$mp" --workers "$MX_WORKERS" --downstream "127.0.0.1:$sp" \
        --relay-domains example.com --log-level warn "${extra[@]}" 2> "$work/$name.log" &
    mx=$!
    roots="$roots $mx"
    if ! py greet "$mp" 10; then
        unavailable "$name" "did not start: $(tail -1 "$work/$name.log")"
    elif measure "$name" "$mp" "$work/sink-$name.out" "$mx"; then
        record "$name"
        if [ "$name" = mxspool ]; then
            FSYNCS=$(curl -s "http://127.0.0.1:$hp/metrics" | awk '$1 == "mxgate_spool_fsyncs_total" { print $2 }')
        fi
    else unavailable "$name" "$r_err"; tail -5 "$work/$name.log" >&2; fi
    kill -TERM "$mx" 2>/dev/null || true
    for _ in $(seq 150); do [ -n "$(py alive "$mx")" ] || break; sleep 0.1; done
    if [ -n "$(py alive "$mx")" ]; then
        echo "compare: mxgate still running 15 s after SIGTERM; killing it" >&2
        kill_tree "$mx"
    else
        wait "$mx" 2>/dev/null || rc=$?
        [ "$rc" -eq 0 ] || echo "compare: mxgate exited $rc after SIGTERM" >&2
    fi
    forget "$mx"
    stop_sink
}

# ---- 3. a private Postfix instance (never /etc/postfix's)
run_postfix() {
    local sp pp d=$work/pf master
    [ -x "$POSTQUEUE" ] || { unavailable postfix "$POSTQUEUE not installed"; return 0; }
    sp=$(py port); pp=$(py port)
    postfix_setup "$d" "$sp" "$pp" || { unavailable postfix "$pf_why"; return 0; }
    start_sink "$sp" "$work/sink-postfix.out"
    pf_conf=$d/etc
    if ! timeout 60 "$POSTFIX" -c "$d/etc" start > "$work/pfstart.out" 2>&1 ||
       ! py greet "$pp" 20; then
        unavailable postfix "did not start: $(tail -1 "$work/pfstart.out") $(tail -1 "$d/maillog" 2>/dev/null)"
        stop_postfix; stop_sink; return 0
    fi
    master=$(tr -d ' \n' < "$d/queue/pid/master.pid")
    if measure postfix "$pp" "$work/sink-postfix.out" "$master"; then
        record postfix
        local q
        q=$(timeout 30 "$POSTQUEUE" -c "$d/etc" -p 2>&1 | tail -1)
        echo "compare: postfix: queue after the run: $q; $(grep -c 'status=sent' "$d/maillog" || true) status=sent log lines" >&2
    else
        unavailable postfix "$r_err"
        grep -E 'warning|fatal|error' "$d/maillog" | tail -5 >&2 || true
    fi
    stop_postfix
    stop_sink
}

# ---- 4. Haraka from npm, queue/smtp_forward
haraka_install() { # -> haraka_bin, or haraka_why
    haraka_bin=$HARAKA_DIR/node_modules/.bin/haraka
    [ -x "$haraka_bin" ] && return 0
    command -v node >/dev/null || { haraka_why="node not installed"; return 1; }
    command -v npm >/dev/null || { haraka_why="npm not installed"; return 1; }
    mkdir -p "$HARAKA_DIR"
    [ -e "$HARAKA_DIR/package.json" ] || echo '{ "name": "mxgate-bench-haraka", "private": true }' > "$HARAKA_DIR/package.json"
    echo "compare: installing Haraka@$HARAKA_VERSION into $HARAKA_DIR (npm)" >&2
    if ! timeout 300 npm install --prefix "$HARAKA_DIR" --no-audit --no-fund \
            "Haraka@$HARAKA_VERSION" > "$work/npm.out" 2>&1; then
        haraka_why="npm install failed: $(grep -v -e '^npm warn' -e 'complete log' "$work/npm.out" |
            head -2 | tr '\n' ' ' | sed 's/ *$//')"
        return 1
    fi
    [ -x "$haraka_bin" ] || { haraka_why="npm install left no $haraka_bin"; return 1; }
}
run_haraka() { # nodes
    local nodes=$1 name=haraka_nodes$1 sp hp h=$work/haraka$1 hk
    sp=$(py port); hp=$(py port)
    mkdir -p "$h/config"
    # Haraka wants a full config directory: start from its shipped defaults.
    cp -r "$HARAKA_DIR/node_modules/Haraka/config/." "$h/config/"
    printf 'listen=127.0.0.1:%s\nnodes=%s\n' "$hp" "$nodes" > "$h/config/smtp.ini"
    printf 'rcpt_to.in_host_list\nqueue/smtp_forward\n' > "$h/config/plugins"
    printf 'host=127.0.0.1\nport=%s\nenable_outbound=false\n' "$sp" > "$h/config/smtp_forward.ini"
    printf 'example.com\n' > "$h/config/host_list"
    printf '[main]\nlevel=warn\n' > "$h/config/log.ini"
    printf 'hk.bench\n' > "$h/config/me"
    start_sink "$sp" "$work/sink-$name.out"
    "$haraka_bin" -c "$h" > "$work/$name.log" 2>&1 &
    hk=$!
    roots="$roots $hk"
    if ! py greet "$hp" 30; then
        unavailable "$name" "did not start: $(grep -v tls "$work/$name.log" | tail -1)"
    elif measure "$name" "$hp" "$work/sink-$name.out" "$hk"; then
        record "$name"
        [ "$nodes" -eq 0 ] || echo "compare: $name: processes: $(py tree "$hk" | wc -w)" >&2
    else
        unavailable "$name" "$r_err"
        grep -E 'CRIT|ERROR' "$work/$name.log" | grep -v tls | tail -5 >&2 || true
    fi
    kill_tree "$hk"
    forget "$hk"
    stop_sink
}

for p in $PATHS; do
    case $p in
    direct) run_direct ;;
    mxgate) run_mxgate mxgate ;;
    mxspool) run_mxgate mxspool ;;
    mxrts) run_mxgate mxrts ;;
    postfix) run_postfix ;;
    haraka)
        if haraka_install; then
            echo "compare: Haraka $(node -e "console.log(require(process.argv[1]).version)" \
                "$PWD/$HARAKA_DIR/node_modules/Haraka/package.json" 2>/dev/null), node $(node -v)" >&2
            for n in $HARAKA_NODES; do run_haraka "$n"; done
        else
            unavailable haraka "$haraka_why"
        fi ;;
    *) echo "compare: unknown path $p" >&2; exit 2 ;;
    esac
done

# ---- report
have() { [ -n "${RATE[$1]:-}" ]; }
per_k() { calc "${CPU[$1]} * 1000 / $MESSAGES" 4; }

# The best Haraka variant (throughput) stands for "haraka".
best=""
for n in $HARAKA_NODES; do
    have "haraka_nodes$n" || continue
    if [ -z "$best" ] || [ "$(calc "${RATE[haraka_nodes$n]} > ${RATE[$best]}" 0)" = 1 ]; then
        best=haraka_nodes$n
    fi
done
if [ -n "$best" ]; then
    RATE[haraka]=${RATE[$best]}; CPU[haraka]=${CPU[$best]}
fi

echo
printf '%-15s %9s %9s %9s %9s %11s %9s %9s %8s\n' \
    path msgs/s wall_s source_s cpu_s cpu_s/1000 sink_cpu delivered ceiling
for p in $ORDER; do
    if have "$p"; then
        ceil="-"
        have direct && ceil=$(calc "${RATE[$p]} / ${RATE[direct]}" 3)
        printf '%-15s %9s %9s %9s %9s %11s %9s %9s %8s\n' "$p" "${RATE[$p]}" "${WALL[$p]}" \
            "${SRC[$p]}" "${CPU[$p]}" "$(per_k "$p")" "${SINKCPU[$p]}" "${GOT[$p]}" "$ceil"
    else
        printf '%-15s unavailable (%s)\n' "$p" "${NOTE[$p]}"
    fi
done
echo "(cpu_s: the server's process tree; for direct, smtp-sink's. sink_cpu: smtp-sink behind the server.)"
[ -z "$best" ] || echo "haraka: best variant is $best (smtp.ini nodes=${best#haraka_nodes})"
echo

for p in direct mxgate mxspool mxrts postfix haraka; do
    case $p in mxspool|mxrts) case " $PATHS " in *" $p "*) ;; *) continue ;; esac ;; esac
    if have "$p"; then
        ceil=n/a
        have direct && ceil=$(calc "${RATE[$p]} / ${RATE[direct]}" 3)
        echo "$p msgs_per_s=${RATE[$p]} cpu_s_per_1000=$(per_k "$p") ratio_to_ceiling=$ceil"
    else
        reason=${NOTE[$p]:-}
        case " $PATHS " in
        *" $p "*) [ -n "$reason" ] || reason="no haraka variant completed" ;;
        *) reason="not run: not in PATHS" ;;
        esac
        echo "$p: unavailable ($reason)"
    fi
done
ratio_tp() { if have mxgate && have "$1"; then calc "${RATE[mxgate]} / ${RATE[$1]}" 3; else echo n/a; fi; }
ratio_cpu() {
    if have mxgate && have "$1" && [ "$(calc "${CPU[mxgate]} > 0" 0)" = 1 ]; then
        calc "${CPU[$1]} / ${CPU[mxgate]}" 2
    else
        echo n/a
    fi
}
if have mxspool; then
    [ -z "${FSYNCS:-}" ] || echo "mxspool fsyncs=$FSYNCS fsyncs_per_msg=$(calc "$FSYNCS / ($MESSAGES + $WARMUP)" 4)"
    have postfix && echo "mxspool_vs_postfix_throughput: $(calc "${RATE[mxspool]} / ${RATE[postfix]}" 3)"
    have postfix && echo "mxspool_vs_postfix_cpu_per_msg: $(calc "${CPU[postfix]} / ${CPU[mxspool]}" 2)"
fi
echo "mxgate_vs_postfix_throughput: $(ratio_tp postfix)"
echo "mxgate_vs_haraka_throughput: $(ratio_tp haraka)"
echo "mxgate_vs_postfix_cpu_per_msg: $(ratio_cpu postfix)"
echo "mxgate_vs_haraka_cpu_per_msg: $(ratio_cpu haraka)"
