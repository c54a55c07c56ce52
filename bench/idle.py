#!/usr/bin/env python3
"""
idle.py - memory cost of idle sessions: opens N TCP connections to a running
mxgate, reads each one's 220 greeting (so every session exists), holds them,
and compares the gateway's VmRSS before and after.

    python3 bench/idle.py --port 2525 --pid PID [-n 10000] [--hold 2] [--limit 120]

Prints rss_before_kb, rss_after_kb, connections and, last,
`rss_per_idle_conn_bytes: N`. Everything on 127.0.0.1; bounded by --limit
seconds overall; exits non-zero if fewer than N sessions were greeted.
The gateway needs max_connections and max_connections_per_ip >= N, a
command_timeout longer than the run, and a descriptor limit above N.
"""
import argparse
import resource
import selectors
import socket
import sys
import time


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to wait before the second RSS read")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds for the whole run")
    a = ap.parse_args()
    end = time.monotonic() + a.limit

    have = raise_nofile(a.n + 64)
    if have < a.n + 16:
        sys.exit("idle: RLIMIT_NOFILE is %d, need %d (ulimit -n)" % (have, a.n + 16))

    time.sleep(0.5)
    before = rss_kb(a.pid)

    sel = selectors.DefaultSelector()
    socks = []
    greeted = refused = 0
    pending = {}

    def drain(timeout):
        nonlocal greeted, refused
        for key, _ in sel.select(timeout):
            s = key.fileobj
            try:
                d = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                d = b""
            buf = pending.get(s, b"") + d
            if b"\n" in buf or not d:
                sel.unregister(s)
                pending.pop(s, None)
                if buf.startswith(b"220"):
                    greeted += 1
                else:
                    refused += 1
                    if refused <= 3:
                        print("idle: not greeted: %r" % buf[:120], file=sys.stderr)
            else:
                pending[s] = buf

    try:
        for i in range(a.n):
            if time.monotonic() > end:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect((a.host, a.port))
            except OSError as e:
                print("idle: connect %d failed: %s" % (i, e), file=sys.stderr)
                s.close()
                break
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
            if i % 256 == 255:
                drain(0)
        while greeted + refused < len(socks) and time.monotonic() < end:
            drain(0.2)
        time.sleep(min(a.hold, max(0.0, end - time.monotonic())))
        after = rss_kb(a.pid)
    finally:
        for s in socks:
            s.close()

    n = greeted
    print("connections: %d opened, %d greeted, %d refused" % (len(socks), greeted, refused))
    print("rss_before_kb: %d" % before)
    print("rss_after_kb: %d" % after)
    if n == 0:
        print("rss_per_idle_conn_bytes: nan")
        sys.exit(1)
    print("rss_per_idle_conn_bytes: %d" % round((after - before) * 1024 / n))
    if n < a.n:
        sys.exit("idle: only %d of %d sessions were greeted" % (n, a.n))


if __name__ == "__main__":
    main()
