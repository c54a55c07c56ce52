#!/usr/bin/env bash
# tls.sh - what STARTTLS costs, in one run on this machine (make bench-tls).
#
# The load client is build/bench/tls_load (bench/tls_load.c): smtp-source
# has no TLS. The downstream is Postfix's smtp-sink, as in e2e.sh; mxgate
# relays to it with the flags e2e.sh passes (--workers <nproc>, the process
# started as root like every e2e benchmark here, so mxgate drops to its
# default user after binding; no --user is passed), plus --tls may with a
# self-signed EC P-256 certificate made here, and an operations endpoint
# on a free port (the default 127.0.0.1:8025 would clash with another
# instance), read for the handshake counters.
#
#   a/b. persistent sessions: SESSIONS sessions in parallel send MESSAGES
#        messages of SIZE octets, plaintext (tls_load --plain) and with
#        STARTTLS (one handshake per session), ROUNDS rounds alternating
#        plain/tls, once without and once with PIPELINING; per run: wall
#        time (the client's), msgs/s, mxgate CPU seconds (utime + stime
#        from /proc/PID/stat before and after, as e2e.sh) and CPU per
#        message. Ratios are of the medians.
#   c.   handshakes: HANDSHAKES sessions of EHLO, STARTTLS, handshake, QUIT
#        (HS_SESSIONS in parallel), TLS 1.3 and 1.2, full and resumed
#        (--resume offers the slot's previous ticket), and the same
#        sessions without TLS; mxgate CPU per handshake. "per worker" is
#        handshakes per mxgate CPU second, i.e. what one worker thread (at
#        most one core) does when busy: on 2 cores the client takes the
#        rest, and its side of an OpenSSL 3.0 handshake costs more than
#        mxgate's (bench/tls_load.c), so the observed rate, shown as well,
#        is bounded by the client.
#   d.   Postfix with TLS: a private instance (bench/postfix.sh, as for compare.sh:
#        config, queue and data directories under the scratch directory, its
#        own port on 127.0.0.1, relaying to its own smtp-sink) with
#        smtpd_tls_security_level = may and the same certificate; the same
#        load as b (persistent STARTTLS sessions, no PIPELINING). Time runs
#        until smtp-sink has counted every message (Postfix queues first);
#        the ratio is mxgate's median TLS msgs/s from b over Postfix's.
#   f.   TLS towards the downstream: two gateways relay to a third
#        mxgate (STARTTLS offered with the same certificate) in front of
#        smtp-sink, one with --downstream-tls encrypt and one without; the
#        load is a's (plaintext persistent sessions, no PIPELINING), ROUNDS
#        rounds alternating between them; CPU per message of the relaying
#        gateway. Its pool's connections are set up once and carry up to
#        1000 messages each, so this is the cost of the records.
#   e.   memory: a fresh mxgate, a few handshakes (OpenSSL's first-use
#        allocations), VmRSS, then IDLE_CONNS sessions set up (greeting,
#        EHLO, STARTTLS, handshake, EHLO) and held; VmRSS while held. At
#        most IDLE_WINDOW sessions are in setup at once, so memory a
#        handshake needs only while it runs is bounded and not counted per
#        session. The same with plaintext sessions (greeting, EHLO) on
#        another fresh mxgate.
#
# Ends with lines for scripts ("n/a (reason)" where a part did not run):
#   tls_cpu_ratio: R                   TLS / plaintext mxgate CPU per message (goal <= 1.25)
#   tls_cpu_ratio_pipelined: R         the same with PIPELINING
#   tls_throughput_ratio: R            TLS / plaintext msgs/s
#   tls_vs_postfix_ratio: R            mxgate / Postfix msgs/s, both with STARTTLS (goal >= 10)
#   handshakes_per_s_per_worker: N     TLS 1.3 full handshakes per mxgate CPU second
#   resumed_handshakes_per_s_per_worker: N
#   rss_per_idle_tls_conn_bytes: N
#   rss_per_idle_plain_conn_bytes: N
#   downstream_tls_cpu_ratio: R        relaying gateway CPU per message, downstream TLS / plaintext
#
# Usage: bash bench/tls.sh   (env: MXGATE=build/mxgate TLS_LOAD=build/bench/tls_load
#        MESSAGES=20000 SESSIONS=50 SIZE=4096 WORKERS=<nproc> ROUNDS=3
#        HANDSHAKES=5000 HS_SESSIONS=50 IDLE_CONNS=10000 IDLE_WINDOW=32
#        CLIENT_THREADS=1 WARMUP=1000 LOG_LEVEL=info RUN_LIMIT=300
#        DRAIN_LIMIT=180 PARTS="persistent handshakes postfix downstream idle")
# Everything listens on 127.0.0.1, every step has a time limit, and every
# process started here is stopped here (by its PID; the private Postfix
# with "postfix -c DIR stop" and then by PID).
set -eu
cd "$(dirname "$0")/.."

MXGATE=${MXGATE:-build/mxgate}
TLS_LOAD=${TLS_LOAD:-build/bench/tls_load}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-4096}
WORKERS=${WORKERS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
HANDSHAKES=${HANDSHAKES:-5000}
HS_SESSIONS=${HS_SESSIONS:-$SESSIONS}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_WINDOW=${IDLE_WINDOW:-32}
IDLE_HOLD=${IDLE_HOLD:-3}
CLIENT_THREADS=${CLIENT_THREADS:-1}
WARMUP=${WARMUP:-1000}
LOG_LEVEL=${LOG_LEVEL:-info}
RUN_LIMIT=${RUN_LIMIT:-300}      # seconds per tls_load run
DRAIN_LIMIT=${DRAIN_LIMIT:-180}  # seconds Postfix's queue may lag behind the client
PARTS=${PARTS:-persistent handshakes postfix downstream idle}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
POSTCONF=${POSTCONF:-/usr/sbin/postconf}

for b in "$MXGATE" "$TLS_LOAD" "$SINK"; do
    [ -x "$b" ] || { echo "tls: $b not found or not executable (make bench-tls builds them)" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "tls: openssl not found" >&2; exit 2; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-tls.XXXXXX")
chmod 755 "$work"            # Postfix's unprivileged daemons live below it
pids=""
pf_conf=""                   # a running private Postfix, if any
pf_master=""
. bench/common.sh
. bench/postfix.sh

stop_postfix() {
    [ -n "$pf_conf" ] || return 0
    timeout 30 "$POSTFIX" -c "$pf_conf" stop >/dev/null 2>&1 || true
    if [ -n "$pf_master" ]; then
        for _ in $(seq 100); do kill -0 "$pf_master" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pf_master" 2>/dev/null && stop_tree "$pf_master"
    fi
    pf_conf=""
    pf_master=""
}
# common.sh's cleanup, and the private Postfix first.
cleanup() {
    stop_postfix
    stop_pids
    rm -rf "$work"
}

# /proc walking (process trees, for Postfix's CPU) and smtp-sink's counter.
py() { python3 bench/proc.py "$@"; }

stop_tree() { # ROOT: TERM to the tree, KILL what is left after 5 s
    local all p
    all=$(py tree "$1" 2>/dev/null || true)
    [ -n "$all" ] || return 0
    for p in $all; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local left=""
        for p in $all; do kill -0 "$p" 2>/dev/null && left=1; done
        [ -n "$left" ] || break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
}

# A private copy: the tree may be rebuilt while this runs.
cp "$MXGATE" "$work/mxgate"
echo "tls: mxgate: $MXGATE ($(sha256sum "$MXGATE" | cut -c1-12), built $(date -r "$MXGATE" '+%F %T')), $(git log -1 --format='%h %s' 2>/dev/null | cut -c1-70)"
echo "tls: $("$TLS_LOAD" --help >/dev/null 2>&1 && echo tls_load ok), $(openssl version), $(nproc) CPUs, $(uname -r), workers=$WORKERS, client threads=$CLIENT_THREADS"

# ---- the certificate: self-signed, EC P-256, as make run makes it
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=mx.bench -addext subjectAltName=DNS:mx.bench,IP:127.0.0.1 \
    -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
chmod 644 "$work/tls/cert.pem"
chmod 600 "$work/tls/key.pem"
cert=$work/tls/cert.pem
key=$work/tls/key.pem


start_mxgate() { # port downstream_port logfile extra-flags... -> mx_pid, mx_http
    local port=$1 ds=$2 log=$3 maxc=$((2 * IDLE_CONNS + 1000))
    shift 3
    [ "$maxc" -ge 20000 ] || maxc=20000
    mx_http=$(free_port)
    "$work/mxgate" --listen "127.0.0.1:$port" --downstream "127.0.0.1:$ds" \
        --relay-domains example.com --hostname mx.bench --workers "$WORKERS" \
        --max-connections "$maxc" --max-connections-per-ip "$maxc" --log-level "$LOG_LEVEL" \
        --http-listen "127.0.0.1:$mx_http" \
        --tls may --tls-cert-file "$cert" --tls-key-file "$key" "$@" 2> "$log" &
    mx_pid=$!
    pids="$pids $mx_pid"
    if ! wait_port "$port" 10; then tail -20 "$log" >&2; exit 1; fi
}
stop_mxgate() { # pid log
    kill -TERM "$1" 2>/dev/null || true
    local rc=0
    for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then
        echo "tls: MXGATE PROBLEM: still running 15 s after SIGTERM; killed" >&2
        kill -9 "$1" 2>/dev/null || true
    fi
    wait "$1" || rc=$?
    [ "$rc" -eq 0 ] || echo "tls: MXGATE PROBLEM: exited $rc after SIGTERM; log tail:" >&2
    [ "$rc" -eq 0 ] || tail -5 "$2" >&2
}
# What mxgate's log says went wrong (warnings, errors, TLS failures).
mx_log_check() { # logfile label
    local n
    n=$(grep -E 'level=(warn|error)|event=tls_failed|event=tls_error' "$1" | grep -cv 'event=privileges' || true)
    if [ "$n" -gt 0 ]; then
        echo "tls: $2: mxgate logged $n warnings/errors/TLS failures; first ones:" >&2
        grep -E 'level=(warn|error)|event=tls_failed|event=tls_error' "$1" | grep -v 'event=privileges' | head -5 >&2 || true
    fi
}
mx_tls_metrics() { # -> "ok=N failed=N timeout=N refused=N resumed=N"
    curl -s --max-time 5 "http://127.0.0.1:$mx_http/metrics" 2>/dev/null | awk '
        /^mxgate_tls_handshakes_total\{/ { match($0, /result="[a-z]+"/); r = substr($0, RSTART + 8, RLENGTH - 9); v[r] = $NF }
        /^mxgate_tls_resumed_total / { res = $NF }
        END { printf "ok=%s failed=%s timeout=%s refused=%s resumed=%s", v["ok"], v["failed"], v["timeout"], v["refused"], res }'
}

# Runs tls_load; its last line in L, its output kept; false when it failed.
load() { # port args...
    local port=$1 rc=0
    shift
    timeout $((RUN_LIMIT + 30)) "$TLS_LOAD" --time-limit "$RUN_LIMIT" -t "$CLIENT_THREADS" "$@" "127.0.0.1:$port" \
        > "$work/load.out" 2> "$work/load.err" || rc=$?
    L=$(grep '^tls_load: mode=' "$work/load.out" | tail -1 || true)
    if [ "$rc" -ne 0 ]; then
        echo "tls: tls_load $* exited $rc:" >&2
        sed 's/^/    /' "$work/load.err" "$work/load.out" | head -25 >&2
        return 1
    fi
}
f() { echo "$L" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "nan" }'; }
problems=0
problem() { problems=$((problems + 1)); echo "tls: PROBLEM: $*" >&2; }

declare -A R
skip() { R[$1]="n/a ($2)"; echo "tls: $1: skipped: $2" >&2; }

# ---- a/b. persistent sessions, plaintext and STARTTLS
run_persistent() {
    local sp mp sent=0
    sp=$(free_port); mp=$(free_port)
    start_sink "$sp" "$work/sink-ab.out"
    start_mxgate "$mp" "$sp" "$work/mxgate-ab.log"
    echo
    echo "== a/b. persistent sessions: $MESSAGES messages of $SIZE octets over $SESSIONS sessions, $ROUNDS rounds, mxgate workers=$WORKERS"
    if [ "$WARMUP" -gt 0 ]; then
        load "$mp" -s "$SESSIONS" -m "$WARMUP" -l "$SIZE" || problem "warm-up run failed"
        sent=$((sent + $(f messages)))
    fi
    printf '%-6s %-9s %-6s %9s %8s %10s %12s %10s %8s\n' round pipeline kind msgs/s wall_s mx_cpu_s mx_us_per_msg client_cpu errors
    local r pipe kind args m0 m1 cpu us plain_us=0
    declare -A RATES CPUS PAIRS
    for r in $(seq "$ROUNDS"); do
        for pipe in off on; do
            for kind in plain tls; do
                args=(-s "$SESSIONS" -m "$MESSAGES" -l "$SIZE")
                [ "$kind" = tls ] || args+=(--plain)
                [ "$pipe" = off ] || args+=(--pipeline)
                m0=$(ticks "$mx_pid")
                if ! load "$mp" "${args[@]}"; then
                    problem "round $r $kind pipeline=$pipe: tls_load failed against mxgate"
                    [ -n "$L" ] || continue
                fi
                m1=$(ticks "$mx_pid")
                sent=$((sent + $(f messages)))
                cpu=$(calc "($m1 - $m0) / $HZ" 2)
                us=$(calc "($m1 - $m0) / $HZ * 1000000 / $(f messages)" 1)
                printf '%-6s %-9s %-6s %9s %8s %10s %12s %10s %8s\n' "$r" "$pipe" "$kind" "$(f msgs_per_s)" \
                    "$(f seconds)" "$cpu" "$us" "$(f client_cpu_s)" "$(f errors)"
                RATES[$pipe.$kind]="${RATES[$pipe.$kind]:-} $(f msgs_per_s)"
                CPUS[$pipe.$kind]="${CPUS[$pipe.$kind]:-} $us"
                [ "$kind" = plain ] && plain_us=$us
                [ "$kind" = tls ] && [ "$(calc "$plain_us > 0" 0)" = 1 ] &&
                    PAIRS[$pipe]="${PAIRS[$pipe]:-} $(calc "$us / $plain_us" 2)"
            done
        done
    done
    sleep 0.3
    local got
    got=$(py count "$work/sink-ab.out")
    [ "$got" -eq "$sent" ] || problem "smtp-sink counted $got messages, tls_load had $sent accepted"
    echo "smtp-sink counted $got messages; tls_load had $sent accepted (warm-up included)"
    echo "mxgate TLS handshakes: $(mx_tls_metrics)"
    for pipe in off on; do
        local pr pt cr ct
        pr=$(echo "${RATES[$pipe.plain]}" | median); pt=$(echo "${RATES[$pipe.tls]}" | median)
        cr=$(echo "${CPUS[$pipe.plain]}" | median); ct=$(echo "${CPUS[$pipe.tls]}" | median)
        echo "pipeline $pipe: medians plain $pr msgs/s ${cr} us/msg, tls $pt msgs/s ${ct} us/msg:" \
            "cpu/msg tls/plain $(calc "$ct / $cr" 3) (rounds:${PAIRS[$pipe]}), msgs/s tls/plain $(calc "$pt / $pr" 3)"
        R[cpu_ratio.$pipe]=$(calc "$ct / $cr" 3)
        R[rate_ratio.$pipe]=$(calc "$pt / $pr" 3)
        R[tls_rate.$pipe]=$pt
        R[tls_us.$pipe]=$ct
    done
    mx_log_check "$work/mxgate-ab.log" "a/b"
    # ---- c. handshakes, on the same gateway
    run_handshakes "$mp"
    stop_mxgate "$mx_pid" "$work/mxgate-ab.log"
    stop_pid "$sink_pid"
}

run_handshakes() { # port
    case " $PARTS " in *" handshakes "*) ;; *) skip handshakes "not in PARTS"; return 0 ;; esac
    local mp=$1 name args m0 m1 cpu us per_w obs
    echo
    echo "== c. handshakes: $HANDSHAKES sessions each (EHLO, STARTTLS, handshake, QUIT), $HS_SESSIONS in parallel"
    printf '%-14s %9s %9s %9s %10s %10s %12s %10s %10s\n' variant sessions resumed wall_s sessions/s mx_cpu_s mx_us_per_hs per_worker client_cpu
    for name in plain tls13_full tls13_resume tls12_full tls12_resume; do
        case $name in
        plain) args=(--plain) ;;
        tls13_full) args=(--tls13) ;;
        tls13_resume) args=(--tls13 --resume) ;;
        tls12_full) args=(--tls12) ;;
        tls12_resume) args=(--tls12 --resume) ;;
        esac
        m0=$(ticks "$mx_pid")
        if ! load "$mp" -s "$HS_SESSIONS" --handshakes "$HANDSHAKES" "${args[@]}"; then
            problem "handshakes $name: tls_load failed against mxgate"
            [ -n "$L" ] || continue
        fi
        m1=$(ticks "$mx_pid")
        cpu=$(calc "($m1 - $m0) / $HZ" 2)
        us=$(calc "($m1 - $m0) / $HZ * 1000000 / $(f sessions)" 0)
        per_w=$(calc "$(f sessions) / (($m1 - $m0) / $HZ)" 0)   # per mxgate CPU second
        obs=$(f sessions_per_s)
        printf '%-14s %9s %9s %9s %10s %10s %12s %10s %10s\n' "$name" "$(f sessions)" "$(f resumed)" "$(f seconds)" \
            "$obs" "$cpu" "$us" "$per_w" "$(f client_cpu_s)"
        R[hs.$name]=$per_w
        R[hs_obs.$name]=$(calc "$obs / $WORKERS" 0)
        R[hs_resumed.$name]=$(f resumed)
    done
    echo "(per_worker: sessions per mxgate CPU second, what one busy worker does; observed sessions/s per worker:" \
        "tls13_full ${R[hs_obs.tls13_full]:-n/a}, tls13_resume ${R[hs_obs.tls13_resume]:-n/a})"
    local v
    for v in tls13_resume tls12_resume; do
        [ -n "${R[hs_resumed.$v]:-}" ] || continue
        # Each slot's first handshake is full: at most HS_SESSIONS of them.
        if [ "${R[hs_resumed.$v]}" -lt $((HANDSHAKES - HS_SESSIONS)) ]; then
            problem "$v: only ${R[hs_resumed.$v]} of $HANDSHAKES handshakes resumed (at least $((HANDSHAKES - HS_SESSIONS)) expected: each slot offers the newest ticket it got)"
        fi
    done
    echo "mxgate TLS handshakes: $(mx_tls_metrics)"
    mx_log_check "$work/mxgate-ab.log" "c"
}

# ---- d. Postfix with STARTTLS
run_postfix() {
    local sp pp d=$work/pf x
    sp=$(free_port); pp=$(free_port)
    postfix_setup "$d" "$sp" "$pp" "smtpd_tls_security_level = may
smtpd_tls_chain_files = $key, $cert
smtpd_tls_loglevel = 0
smtpd_tls_received_header = yes" || { skip postfix "$pf_why"; return 0; }
    echo
    echo "== d. Postfix with STARTTLS: the same load ($MESSAGES messages of $SIZE octets, $SESSIONS persistent STARTTLS sessions)"
    start_sink "$sp" "$work/sink-pf.out"
    pf_conf=$d/etc
    if ! timeout 60 "$POSTFIX" -c "$d/etc" start > "$work/pfstart.out" 2>&1 ||
       ! wait_port "$pp" 20 2>/dev/null; then
        skip postfix "did not start: $(tail -1 "$work/pfstart.out") $(tail -1 "$d/maillog" 2>/dev/null)"
        stop_postfix; stop_pid "$sink_pid"; return 0
    fi
    pf_master=$(tr -d ' \n' < "$d/queue/pid/master.pid")
    local warm=$((WARMUP < MESSAGES ? WARMUP : MESSAGES))
    if [ "$warm" -gt 0 ]; then
        if ! load "$pp" -s "$SESSIONS" -m "$warm" -l "$SIZE" ||
           ! timeout $((DRAIN_LIMIT + 10)) python3 bench/proc.py wait "$work/sink-pf.out" "$warm" "$DRAIN_LIMIT" > /dev/null; then
            skip postfix "warm-up failed (smtp-sink counted $(py count "$work/sink-pf.out") of $warm)"
            grep -E 'warning|fatal|error' "$d/maillog" | tail -5 >&2 || true
            stop_postfix; stop_pid "$sink_pid"; return 0
        fi
    fi
    local base target c0 c1 t0 ts w wpid rc=0
    base=$(py count "$work/sink-pf.out")
    target=$((base + MESSAGES))
    # The watcher polls smtp-sink's counter from before the start.
    python3 bench/proc.py wait "$work/sink-pf.out" "$target" $((RUN_LIMIT + DRAIN_LIMIT)) > "$work/wait.out" &
    wpid=$!
    pids="$pids $wpid"
    c0=$(py ticks "$pf_master"); t0=$(now)
    load "$pp" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" || rc=$?
    ts=$(now)
    local pf_line=$L
    if [ "$rc" -ne 0 ]; then
        stop_pid "$wpid"
        skip postfix "tls_load against Postfix failed"
        grep -E 'warning|fatal|error' "$d/maillog" | tail -5 >&2 || true
        stop_postfix; stop_pid "$sink_pid"; return 0
    fi
    wait "$wpid" || true
    w=$(cat "$work/wait.out")
    case $w in
    ""|timeout*)
        skip postfix "smtp-sink counted $(( $(py count "$work/sink-pf.out") - base )) of $MESSAGES within ${DRAIN_LIMIT}s after the client"
        stop_postfix; stop_pid "$sink_pid"; return 0 ;;
    esac
    c1=$(py ticks "$pf_master")
    local te=${w% *} wall rate cpu us
    [ "$(calc "$te < $ts" 0)" = 0 ] || te=$ts
    wall=$(calc "$te - $t0" 3)
    rate=$(calc "$MESSAGES / $wall" 0)
    cpu=$(calc "($c1 - $c0) / $HZ" 2)
    us=$(calc "($c1 - $c0) / $HZ * 1000000 / $MESSAGES" 1)
    L=$pf_line
    echo "postfix: $MESSAGES messages delivered to smtp-sink in ${wall} s ($rate msgs/s; the client was done after $(calc "$ts - $t0" 3) s," \
        "$(f protocol) $(f cipher)); Postfix process tree cpu ${cpu} s, ${us} us/msg; $(grep -c 'status=sent' "$d/maillog" || true) status=sent log lines"
    R[pf_rate]=$rate
    R[pf_us]=$us
    stop_postfix
    stop_pid "$sink_pid"
}

# ---- f. TLS towards the downstream
run_downstream() {
    local sp ip pa pb plain_pid tls_pid tls_http r kind port pid m0 m1 us sent=0
    sp=$(free_port); ip=$(free_port); pa=$(free_port); pb=$(free_port)
    start_sink "$sp" "$work/sink-ds.out"
    start_mxgate "$ip" "$sp" "$work/mxgate-ds-inner.log"
    local inner_pid=$mx_pid
    start_mxgate "$pa" "$ip" "$work/mxgate-ds-plain.log"
    plain_pid=$mx_pid
    start_mxgate "$pb" "$ip" "$work/mxgate-ds-tls.log" --downstream-tls encrypt
    tls_pid=$mx_pid tls_http=$mx_http
    echo
    echo "== f. TLS towards the downstream: $MESSAGES messages of $SIZE octets over $SESSIONS plaintext sessions," \
        "$ROUNDS rounds, into a gateway relaying to an mxgate with STARTTLS, with and without --downstream-tls encrypt"
    printf '%-6s %-9s %9s %8s %10s %12s\n' round downstream msgs/s wall_s mx_cpu_s mx_us_per_msg
    declare -A DCPU DRATE
    for r in $(seq "$ROUNDS"); do
        for kind in plain tls; do
            if [ "$kind" = plain ]; then port=$pa pid=$plain_pid; else port=$pb pid=$tls_pid; fi
            m0=$(ticks "$pid")
            if ! load "$port" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" --plain; then
                problem "f round $r downstream $kind: tls_load failed"
                [ -n "$L" ] || continue
            fi
            m1=$(ticks "$pid")
            sent=$((sent + $(f messages)))
            us=$(calc "($m1 - $m0) / $HZ * 1000000 / $(f messages)" 1)
            printf '%-6s %-9s %9s %8s %10s %12s\n' "$r" "$kind" "$(f msgs_per_s)" "$(f seconds)" \
                "$(calc "($m1 - $m0) / $HZ" 2)" "$us"
            DCPU[$kind]="${DCPU[$kind]:-} $us"
            DRATE[$kind]="${DRATE[$kind]:-} $(f msgs_per_s)"
        done
    done
    sleep 0.3
    local got cp ct
    got=$(py count "$work/sink-ds.out")
    [ "$got" -eq "$sent" ] || problem "f: smtp-sink counted $got messages, tls_load had $sent accepted"
    echo "smtp-sink counted $got messages; tls_load had $sent accepted"
    echo "downstream TLS: $(curl -s --max-time 5 "http://127.0.0.1:$tls_http/metrics" 2>/dev/null |
        grep -E '^mxgate_downstream_(tls_total|tls_resumed_total|connects_total)' | tr '\n' ' ')"
    cp=$(echo "${DCPU[plain]:-}" | median); ct=$(echo "${DCPU[tls]:-}" | median)
    echo "medians: plaintext downstream ${cp} us/msg $(echo "${DRATE[plain]:-}" | median) msgs/s," \
        "TLS downstream ${ct} us/msg $(echo "${DRATE[tls]:-}" | median) msgs/s: cpu/msg tls/plain $(calc "$ct / $cp" 3)"
    R[ds_cpu_ratio]=$(calc "$ct / $cp" 3)
    for x in plain tls inner; do
        case $x in plain) pid=$plain_pid ;; tls) pid=$tls_pid ;; inner) pid=$inner_pid ;; esac
        stop_mxgate "$pid" "$work/mxgate-ds-$x.log"
        mx_log_check "$work/mxgate-ds-$x.log" "f ($x)"
    done
    stop_pid "$sink_pid"
}

# ---- e. memory per idle session, on fresh gateways
run_idle() {
    local n=$IDLE_CONNS hard sp mp kind args
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((n + 200)) ]; then
        n=$((hard - 200))
        echo "tls: idle: the descriptor limit (ulimit -Hn $hard) allows $n sessions, not $IDLE_CONNS" >&2
    fi
    echo
    echo "== e. memory: $n idle sessions held on a fresh mxgate (at most $IDLE_WINDOW in setup at once)"
    for kind in tls plain; do
        sp=$(free_port); mp=$(free_port)
        start_sink "$sp" "$work/sink-idle-$kind.out"
        start_mxgate "$mp" "$sp" "$work/mxgate-idle-$kind.log" --command-timeout 600
        args=()
        [ "$kind" = tls ] || args=(--plain)
        # OpenSSL's and the allocator's first-use memory is not per session.
        load "$mp" -s 8 --handshakes 100 "${args[@]}" || problem "idle $kind: warm-up failed"
        sleep 0.5
        if load "$mp" --idle "$n" --idle-window "$IDLE_WINDOW" --hold "$IDLE_HOLD" --rss-pid "$mx_pid" "${args[@]}"; then
            echo "$kind: $(f idle) sessions set up in $(f seconds) s; mxgate VmRSS $(f rss_before_kb) kB before," \
                "$(f rss_held_kb) kB while held: $(f rss_per_idle_conn_bytes) bytes per idle $kind session"
            R[rss.$kind]=$(f rss_per_idle_conn_bytes)
        else
            problem "idle $kind: tls_load --idle failed"
            R[rss.$kind]="n/a (tls_load --idle failed)"
        fi
        [ "$kind" = plain ] || echo "mxgate TLS handshakes: $(mx_tls_metrics)"
        stop_mxgate "$mx_pid" "$work/mxgate-idle-$kind.log"
        mx_log_check "$work/mxgate-idle-$kind.log" "e ($kind)"
        stop_pid "$sink_pid"
    done
}

case " $PARTS " in *" persistent "*) run_persistent ;; *) skip persistent "not in PARTS" ;; esac
case " $PARTS " in *" postfix "*) run_postfix ;; *) skip postfix "not in PARTS" ;; esac
case " $PARTS " in *" downstream "*) run_downstream ;; *) skip downstream "not in PARTS" ;; esac
case " $PARTS " in *" idle "*) run_idle ;; *) skip idle "not in PARTS" ;; esac

# ---- lines for scripts
val() { echo "${R[$1]:-n/a}"; }
echo
[ "$problems" -eq 0 ] || echo "tls: $problems problem(s) reported above"
echo "tls_cpu_ratio: $(val cpu_ratio.off)"
echo "tls_cpu_ratio_pipelined: $(val cpu_ratio.on)"
echo "tls_throughput_ratio: $(val rate_ratio.off)"
if [ -n "${R[pf_rate]:-}" ] && [ -n "${R[tls_rate.off]:-}" ]; then
    echo "tls_vs_postfix_ratio: $(calc "${R[tls_rate.off]} / ${R[pf_rate]}" 2)"
    echo "tls_vs_postfix_cpu_per_msg: $(calc "${R[pf_us]} / ${R[tls_us.off]}" 2)"
else
    echo "tls_vs_postfix_ratio: ${R[postfix]:-n/a}"
fi
echo "handshakes_per_s_per_worker: $(val hs.tls13_full)"
echo "resumed_handshakes_per_s_per_worker: $(val hs.tls13_resume)"
echo "rss_per_idle_tls_conn_bytes: $(val rss.tls)"
echo "rss_per_idle_plain_conn_bytes: $(val rss.plain)"
echo "downstream_tls_cpu_ratio: $(val ds_cpu_ratio)"
