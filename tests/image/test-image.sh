#!/usr/bin/env bash
# make test-image: the container image, run for real (slow; not in make test).
#
# On 127.0.0.1 only, with --network=host (the container's ports are this
# machine's loopback ports):
#   smtp-sink (Postfix)  <-  mxgate in the image  <-  swaks
#   unbound (tests/integration/dnsserver.py) answers the SPF lookups
# The image runs with its own /etc/mxgate/mxgate.conf (the example config:
# filters limits, relay, recipients, spf) and the deploy/seccomp.json
# profile; MXGATE_* variables and flags move it onto free ports. Checked:
# --help runs, the engine's default seccomp profile (reported, not judged),
# the gateway starts, a message goes through to the sink with spf=pass,
# /metrics (when the binary has http_listen) counts it and /healthz and
# /readyz answer 200, the image's HEALTHCHECK passes, and SIGTERM (the
# engine's stop) drains: the log shows event=stop and the exit status is 0.
#
# Every step is bounded in time; whatever was started is stopped on any
# exit (trap). Ends with "test-image: PASS" or "test-image: FAIL" and the
# exit status 0 or 1. The container's log is kept in build/image/.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
. tests/image/engine.sh

NAME=mxgate-test-$$
SEND_TIMEOUT=${SEND_TIMEOUT:-30}       # swaks, end to end
START_TIMEOUT=${START_TIMEOUT:-20}     # container start to SMTP port open
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-10}     # mxgate's drain_timeout in the test
STOP_TIMEOUT=${STOP_TIMEOUT:-30}       # the engine's stop -t: then SIGKILL
LOG_KEEP=$IMG_DIR/test-image.log

t_start=$(date +%s.%N)
el() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", b - a }'; }
say() { echo "test-image: [$(el)] $*"; }
failures=0
fail() { say "FAIL: $*"; failures=$((failures + 1)); }
ok() { say "ok: $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mxgate-image-test.XXXXXX")
chmod 0755 "$work"
sink_pid=""; dns_pid=""; started=""

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$started" ]; then
        eng logs "$NAME" > "$LOG_KEEP" 2>&1 || true
        eng_t 30 rm -f "$NAME" >/dev/null 2>&1 || true
        eng_t 30 rm -f "$NAME-dflt" >/dev/null 2>&1 || true
    fi
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null
    [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 1' INT TERM

verdict() {
    if [ "$failures" -eq 0 ]; then
        echo "test-image: PASS in $(el | tr -d ' ') ($ENGINE, image $IMAGE, seccomp: $seccomp_used)"
        exit 0
    fi
    local where=""
    [ -n "$started" ] && where="; the container log is in $LOG_KEEP"
    echo "test-image: FAIL in $(el | tr -d ' '): $failures failed step(s)$where"
    exit 1
}
# A step that the rest depends on: stop at once when it fails.
must() { [ "$failures" -eq 0 ] || verdict; }

free_ports() { # n -> n distinct free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
wait_port() { # port seconds [container] -> 0 when something accepts on 127.0.0.1:port
    local end=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        if [ -n "${3:-}" ] && [ "$(eng inspect -f '{{.State.Running}}' "$3" 2>/dev/null)" != true ]; then
            return 1    # the container is gone: no use waiting
        fi
        sleep 0.2
    done
    return 1
}
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
http_get() { # url -> "STATUS\nBODY" on stdout; bounded
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode("utf-8", "replace"))
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode("utf-8", "replace"))
except Exception as e:
    print(0); print(e)
EOF
}
accepted() { # metrics text on stdin -> messages accepted (0 when absent)
    awk '/^mxgate_messages_total\{[^}]*outcome="accepted"/ { n += $NF } END { print n + 0 }'
}

say "engine: $ENGINE_SHOWN; image $IMAGE"
for tool in smtp-sink swaks python3; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || fail "$tool not installed (make deps installs it)"
done
must
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
eng image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE (make image builds it)"
must
size=$(eng image inspect --format '{{.Size}}' "$IMAGE")
say "image $IMAGE: $((size / 1000000)) MB"

# ---- 1. --help, and whether this binary has the operations endpoint
help=$(eng_t 60 run --rm --network=host --no-healthcheck "$IMAGE" --help 2>&1)
if grep -q -- '--listen' <<<"$help"; then ok "$IMAGE --help runs ($(grep -c -- '^  --' <<<"$help") options)"; else
    fail "$IMAGE --help: $(tail -3 <<<"$help")"; fi
must
if grep -q http.listen <<<"$help"; then have_http=1; else have_http=""; fi

# ---- 2. seccomp: the engine's default profile (reported), the project's (used)
read -r p_dflt mx_port sink_port http_port <<<"$(free_ports 4)"
started=1
http_off=(); [ -n "$have_http" ] && http_off=(--http-listen "")
eng_t 60 run -d --name "$NAME-dflt" --network=host --no-healthcheck "$IMAGE" \
    --listen "127.0.0.1:$p_dflt" --workers 1 "${http_off[@]}" >/dev/null 2>&1
for _ in $(seq 25); do
    [ "$(eng inspect -f '{{.State.Running}}' "$NAME-dflt" 2>/dev/null)" = true ] || break
    sleep 0.2
done
dflt=$(eng logs "$NAME-dflt" 2>&1 | grep -E 'io_uring_setup|event=start' | head -1)
eng_t 30 rm -f "$NAME-dflt" >/dev/null 2>&1
case $dflt in
*io_uring_setup*) say "the engine's default seccomp profile: mxgate refused: ${dflt#mxgate: }" ;;
*event=start*) say "the engine's default seccomp profile: io_uring allowed, mxgate starts" ;;
*) say "the engine's default seccomp profile: no start-up line seen" ;;
esac

seccomp_opt=(--security-opt "seccomp=$PWD/deploy/seccomp.json")
if probe=$(eng_t 60 run --rm --network=host --no-healthcheck "${seccomp_opt[@]}" --entrypoint /bin/true "$IMAGE" 2>&1); then
    seccomp_used="deploy/seccomp.json"
else
    say "the engine refuses deploy/seccomp.json: $(tail -1 <<<"$probe")"
    seccomp_opt=(--security-opt seccomp=unconfined)
    seccomp_used="unconfined (deploy/seccomp.json refused)"
fi
say "seccomp for the test: $seccomp_used"

# ---- 3. the peers: DNS (SPF records) and the sink
spf_args=()
if [ -x "$(command -v unbound || echo /usr/sbin/unbound)" ]; then
    read -r dns_addr dns_pid < <(timeout 20 python3 - "$work" <<'EOF'
import sys
sys.path.insert(0, "tests/integration")
from dnsserver import DnsServer
d = DnsServer(sys.argv[1], {"sender.example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
d.start()
print(d.addr, d.proc.pid, flush=True)   # unbound keeps running; the test stops it
EOF
)
    if [ -n "${dns_pid:-}" ]; then
        spf_args=(--dns-server "$dns_addr")
        say "DNS (unbound) on $dns_addr: sender.example.org TXT \"v=spf1 ip4:127.0.0.1 -all\""
    else
        fail "unbound did not start"
    fi
else
    say "unbound not installed: SPF runs against the system resolver (spf= not checked)"
fi
mkdir -m 1777 "$work/sink"
sink_user=(); [ "$(id -u)" -eq 0 ] && sink_user=(-u nobody)
"$SINK" "${sink_user[@]}" -d "$work/sink/%M." "127.0.0.1:$sink_port" 100 > "$work/sink.log" 2>&1 &
sink_pid=$!
if wait_port "$sink_port" 10; then say "smtp-sink on 127.0.0.1:$sink_port"; else fail "smtp-sink did not start: $(cat "$work/sink.log")"; fi
must

# ---- 4. the gateway in the image
env_args=(-e "MXGATE_LISTEN=127.0.0.1:$mx_port")
[ -n "$have_http" ] && env_args+=(-e "MXGATE_HTTP_LISTEN=127.0.0.1:$http_port")
health_args=()
# podman runs health checks from systemd timers; with no systemd (here) it
# logs an error per container: no timer, run the check by hand below.
[ "$ENGINE" = podman ] && health_args=(--health-interval disable)
run_cmd=(run -d --name "$NAME" --network=host "${seccomp_opt[@]}" "${health_args[@]}" "${env_args[@]}"
    "$IMAGE" --downstream "127.0.0.1:$sink_port" --hostname mx.image-test --workers 2
    --drain-timeout "$DRAIN_TIMEOUT" "${spf_args[@]}")
say "$ENGINE_SHOWN ${run_cmd[*]}"
t=$(date +%s.%N)
if ! cid=$(eng_t 60 "${run_cmd[@]}" 2>&1); then fail "run: $cid"; fi
must
if wait_port "$mx_port" "$START_TIMEOUT" "$NAME"; then
    ok "mxgate listens on 127.0.0.1:$mx_port ($(secs_since "$t") s after run)"
else
    fail "mxgate did not listen on 127.0.0.1:$mx_port within ${START_TIMEOUT}s; its log:"
    eng logs "$NAME" 2>&1 | tail -20 | sed 's/^/    /'
fi
must
eng logs "$NAME" 2>&1 | grep -E 'event=(start|spf_helper_start) ' | sed 's/^/    /'

before=0
if [ -n "$have_http" ]; then
    m=$(http_get "http://127.0.0.1:$http_port/metrics")
    [ "$(head -1 <<<"$m")" = 200 ] || fail "GET /metrics before: $(head -2 <<<"$m" | tr '\n' ' ')"
    before=$(tail -n +2 <<<"$m" | accepted)
fi

# ---- 5. a message through it
token=image-test-$$-$RANDOM
t=$(date +%s.%N)
if timeout "$SEND_TIMEOUT" swaks --server "127.0.0.1:$mx_port" --helo client.image-test \
        --from alice@sender.example.org --to bob@example.com \
        --header "Subject: $token" --body "through the image: $token" > "$work/swaks.log" 2>&1; then
    ok "swaks: end of data answered \"$(grep -A1 '^ -> \.$' "$work/swaks.log" | tail -1 | sed 's/^<-  //')\" ($(secs_since "$t") s)"
else
    fail "swaks (exit $?):"; tail -8 "$work/swaks.log" | sed 's/^/    /'
fi
got=""
for _ in $(seq 50); do
    got=$(grep -l -- "$token" "$work"/sink/* 2>/dev/null | head -1)
    [ -n "$got" ] && break
    sleep 0.2
done
if [ -n "$got" ]; then
    rcv=no; grep -q 'by mx.image-test' "$got" && rcv=yes
    ok "the sink got it ($(grep -m1 '^X-Rcpt-Args' "$got"); mxgate's Received: header \"by mx.image-test\": $rcv)"
else
    fail "the sink has no message with $token"
fi
txline=$(eng logs "$NAME" 2>&1 | grep 'event=tx ' | grep -- "bob@example.com" | tail -1)
if [ -n "$txline" ]; then
    echo "    $txline"
    if [ ${#spf_args[@]} -gt 0 ]; then
        if grep -q ' spf=pass' <<<"$txline"; then ok "the SPF helper in the image answered spf=pass"; else
            fail "the tx line has no spf=pass; unbound's log:"
            tail -5 "$work"/unbound-*.log 2>/dev/null | sed 's/^/    /'
        fi
    fi
else
    fail "no event=tx line for the message in the container's log"
fi

# ---- 6. the operations endpoint
if [ -n "$have_http" ]; then
    m=$(http_get "http://127.0.0.1:$http_port/metrics")
    after=$(tail -n +2 <<<"$m" | accepted)
    say "scraped /metrics (127.0.0.1:$http_port), the lines that moved or matter:"
    tail -n +2 <<<"$m" | grep -E '^mxgate_(messages_total|transactions_total|connections_accepted_total|spf_checks_total|downstream_connects_total|relayed_bytes_total|workers|draining)' |
        grep -vE ' 0$' | sed 's/^/    /'
    if [ "$(head -1 <<<"$m")" = 200 ] && [ "$after" -ge $((before + 1)) ]; then
        ok "/metrics: mxgate_messages_total{outcome=\"accepted\"} $before -> $after"
    else
        fail "/metrics: accepted messages $before -> $after (status $(head -1 <<<"$m"))"
    fi
    for u in healthz readyz; do
        r=$(http_get "http://127.0.0.1:$http_port/$u")
        if [ "$(head -1 <<<"$r")" = 200 ]; then ok "/$u: 200 $(tail -n +2 <<<"$r" | head -1)"; else
            fail "/$u: $(tr '\n' ' ' <<<"$r")"; fi
    done
else
    echo "test-image: /metrics not checked: this build has no http_listen"
fi

# ---- 7. the image's HEALTHCHECK
if [ "$ENGINE" = podman ]; then
    h=$(eng_t 30 healthcheck run "$NAME" 2>&1); hrc=$?
else
    h=$(eng_t 30 exec "$NAME" /usr/local/sbin/mxgate-healthcheck 2>&1); hrc=$?
fi
how="TCP connect to the SMTP port"; [ -n "$have_http" ] && how="GET /healthz"
if [ "$hrc" -eq 0 ]; then ok "HEALTHCHECK passes (mxgate-healthcheck: $how)"; else
    fail "HEALTHCHECK: exit $hrc $h"; fi

# ---- 8. SIGTERM: drain and exit 0, with one idle client session open
timeout $((STOP_TIMEOUT + 20)) python3 - "$mx_port" > "$work/idle.out" 2>&1 <<'EOF' &
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
f = s.makefile("rb")
f.readline()                                   # the greeting
s.sendall(b"EHLO idle.image-test\r\n")
while True:                                    # the EHLO reply, to its last line
    line = f.readline()
    if not line or line[3:4] != b"-":
        break
print("ready", flush=True)
s.settimeout(60)
print((f.readline() or b"(closed)").decode().strip(), flush=True)   # what the drain says
EOF
idle_pid=$!
for _ in $(seq 50); do grep -q ready "$work/idle.out" && break; sleep 0.1; done
t=$(date +%s.%N)
say "$ENGINE stop -t $STOP_TIMEOUT $NAME (the image's STOPSIGNAL, SIGTERM)"
eng_t $((STOP_TIMEOUT + 30)) stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null 2>&1 || fail "$ENGINE stop failed"
took=$(secs_since "$t")
code=$(eng inspect -f '{{.State.ExitCode}}' "$NAME" 2>/dev/null)
running=$(eng inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)
eng logs "$NAME" 2>&1 | grep -E 'event=(signal|drain|stop) ' | sed 's/^/    /'
wait "$idle_pid" 2>/dev/null
idle=$(tail -n +2 "$work/idle.out" | head -1)
case $idle in
"421 "*) ok "the idle session open during the stop got: $idle" ;;
*) fail "the idle session open during the stop got: ${idle:-nothing} ($(head -1 "$work/idle.out"))" ;;
esac
if [ "$running" = false ] && [ "$code" = 0 ] && eng logs "$NAME" 2>&1 | grep -q 'event=stop '; then
    ok "drained and exited 0 in $took s (event=stop logged)"
else
    fail "after stop: running=$running exit=$code in $took s; event=stop $(eng logs "$NAME" 2>&1 | grep -q 'event=stop ' && echo logged || echo missing)"
fi
eng logs "$NAME" > "$LOG_KEEP" 2>&1 || true
verdict
