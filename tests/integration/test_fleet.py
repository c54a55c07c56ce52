"""
Rate limits shared by a fleet (limits_redis, workers/fleet.h): two mxgate
instances, two workers each, and a real redis-server on loopback started by
the test. A sender's connections and messages spread over the instances
are counted once; Redis killed or stopped mid-test: the gateways keep
serving on their own counts (fail open, counted and logged), and take up
the shared count again when Redis is back.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from mxtest import HOST, Client, free_port, make_message, new_msgid, transact

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    def __init__(self, tmp, port=None):
        self.port = port or free_port()
        self.dir = tmp
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cmd(self, *args, timeout=2.0):
        """One command in RESP; the reply as str, int, list or None."""
        req = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(req)
            f = s.makefile("rb")
            return _resp(f)


def _resp(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:n]
        return data.decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise AssertionError("not RESP: %r" % line)


@pytest.fixture
def redis(tmp_path):
    if not os.access(REDIS, os.X_OK):
        pytest.fail("redis-server is not installed (make deps installs it)")
    r = Redis(tmp_path).start()
    yield r
    r.kill()


def _metrics(gw):
    with urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5) as r:
        return r.read().decode()


def _metric(gw, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), _metrics(gw), re.M)
    return int(m.group(1)) if m else None


def _fleet(gateway, sink, redis, **opts):
    """Two instances sharing redis, each with its /metrics."""
    gws = []
    for _ in range(2):
        o = dict(downstream=sink.addr, workers=2, limits_redis="%s:%d" % (HOST, redis.port),
                 http_listen="%s:%d" % (HOST, free_port()))
        o.update(opts)
        gws.append(gateway(**o))
    for gw in gws:   # every worker connected before the counting starts
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 2, "both workers connected to Redis")
    return gws


def _wait(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for: " + what)


def _mails(gw, n, source="127.0.0.2"):
    """n MAIL commands (each RSET after) in one session; their codes."""
    with Client(gw.port, source=source) as c:
        assert c.greet().code == 220
        c.ehlo()
        out = []
        for _ in range(n):
            r = c.cmd("MAIL FROM:<a@src.test>")
            out.append((r.code, r.esc))
            c.cmd("RSET")
        c.cmd("QUIT")
        return out


def test_messages_counted_once_across_two_instances(sink, gateway, redis):
    a, b = _fleet(gateway, sink, redis, rate_messages=6)
    assert _mails(a, 4) == [(250, "2.1.0")] * 4
    # b has seen nothing of 127.0.0.2, yet two are left: the bucket is in Redis
    got = _mails(b, 4)
    assert got == [(250, "2.1.0")] * 2 + [(450, "4.7.1")] * 2, got
    # a learns the same from the answers to its own updates
    assert _mails(a, 1) == [(450, "4.7.1")]
    # another address has its own bucket, on either instance
    assert _mails(b, 3, source="127.0.0.3") == [(250, "2.1.0")] * 3
    # Redis took a token for each message let through (4 + 2 + 3), and for
    # none refused: those were decided from the fleet's count as last heard
    # (a take is answered after the MAIL's 250: it does not wait)
    def taken():
        return sum(_metric(gw, 'mxgate_rate_redis_replies_total{result="taken"}') for gw in (a, b))
    _wait(lambda: taken() >= 9, "nine tokens taken")
    time.sleep(0.2)
    assert taken() == 9
    h = redis.cmd("HGETALL", "mxgate:rate:127.0.0.2")
    fields = dict(zip(h[::2], h[1::2]))
    assert float(fields["t1"]) < 1.0, fields
    assert "t0" not in fields   # no connection rate configured: only read
    assert 0 < redis.cmd("PTTL", "mxgate:rate:127.0.0.2") <= 60000


def test_connection_flood_over_the_fleet_is_throttled_others_served(sink, gateway, redis):
    # 127.0.0.2 floods both instances in turn; the fleet lets exactly ten in
    # (the connect stage waits for Redis's verdict), while 127.0.0.3 is
    # served by both throughout.
    a, b = _fleet(gateway, sink, redis, rate_connections=10)
    codes, t0 = [], time.monotonic()
    for i in range(30):
        gw = (a, b)[i % 2]
        with Client(gw.port, source="127.0.0.2") as c:
            r = c.greet()
            codes.append((r.code, r.esc))
            if r.code == 220:
                c.cmd("QUIT")
        if i % 10 == 9:
            for other in (a, b):
                with Client(other.port, source="127.0.0.3") as c:
                    assert c.greet().code == 220
                    c.ehlo()
                    mid = new_msgid("fleet-other")
                    assert transact(c, "x@src.test", ["user@example.com"], make_message(mid)).delivered
    took = time.monotonic() - t0
    accepted = sum(1 for c, _ in codes if c == 220)
    # ten a minute: one more token comes back every six seconds
    assert 10 <= accepted <= 10 + int(took / 6) + 1, (codes, took)
    assert all(c == 220 for c, _ in codes[:accepted]), codes
    assert all(c == (421, "4.7.0") for c in codes[accepted:]), codes
    for gw in (a, b):
        assert gw.wait_record(lambda r: r.get("event") == "refused" and r.get("reason") == "rate_connections")


def test_redis_killed_mid_test_gateway_keeps_serving(sink, gateway, redis):
    a, b = _fleet(gateway, sink, redis, rate_messages=8)
    assert _mails(a, 3) == [(250, "2.1.0")] * 3
    redis.kill()
    # every message still gets through: the instance's own count decides
    for i in range(3):
        with Client(b.port, source="127.0.0.5") as c:
            c.greet()
            c.ehlo()
            mid = new_msgid("fleet-down")
            assert transact(c, "x@src.test", ["user@example.com"], make_message(mid)).delivered
            sink.wait_message(mid)
    # a's own count still holds across its workers: 3 before, 5 more, then over
    got = _mails(a, 6)
    assert got == [(250, "2.1.0")] * 5 + [(450, "4.7.1")], got
    for gw in (a, b):
        assert gw.wait_record(lambda r: r.get("event") == "rate_redis_down", timeout=5)
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 0, "up gauge 0")
        assert _metric(gw, "mxgate_rate_redis_disconnects_total") >= 2
    assert _metric(b, "mxgate_rate_redis_failopen_total") >= 3
    # one line per outage and worker, not one per retry
    time.sleep(1.5)
    downs = [r for r in a.log_records() if r.get("event") == "rate_redis_down"]
    assert len(downs) <= 2, downs
    # Redis back on the same port (empty): both reconnect, the count is shared again
    redis.start()
    for gw in (a, b):
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 2, "reconnected")
        assert gw.wait_record(lambda r: r.get("event") == "rate_redis_up")
    assert _mails(b, 2, source="127.0.0.6") == [(250, "2.1.0")] * 2
    _wait(lambda: redis.cmd("HGET", "mxgate:rate:127.0.0.6", "t1") is not None, "the count in Redis again")
    assert 5.9 <= float(redis.cmd("HGET", "mxgate:rate:127.0.0.6", "t1")) <= 6.1


def test_redis_stopped_holds_a_greeting_at_most_the_timeout(sink, gateway, redis):
    a, _ = _fleet(gateway, sink, redis, rate_connections=100, limits_redis_timeout="300ms")
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with Client(a.port, source="127.0.0.7") as c:
            assert c.greet(timeout=5).code == 220
            waited = time.monotonic() - t0
            c.ehlo()
            mid = new_msgid("fleet-stopped")
            assert transact(c, "x@src.test", ["user@example.com"], make_message(mid)).delivered
        # the wheel ticks every 100 ms: 300 ms plus a tick or two
        assert waited < 1.5, waited
        rec = a.wait_record(lambda r: r.get("event") == "rate_redis_down")
        assert rec.get("reason") in ("timeout", "connect_timeout"), rec
        assert _metric(a, "mxgate_rate_redis_failopen_total") >= 1
        # meanwhile (reconnects time out too) other clients are greeted at once
        t0 = time.monotonic()
        with Client(a.port, source="127.0.0.8") as c:
            assert c.greet(timeout=5).code == 220
        assert time.monotonic() - t0 < 1.5
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    _wait(lambda: _metric(a, "mxgate_rate_redis_up") == 2, "reconnected after SIGCONT", timeout=15)


def test_script_flushed_is_loaded_again(sink, gateway, redis):
    a, _ = _fleet(gateway, sink, redis, rate_messages=100)
    assert _mails(a, 2, source="127.0.0.9") == [(250, "2.1.0")] * 2
    assert redis.cmd("SCRIPT", "FLUSH") == "OK"
    # the next update meets NOSCRIPT (fails open, logged), and loads it again
    assert _mails(a, 1, source="127.0.0.9") == [(250, "2.1.0")]
    assert a.wait_record(lambda r: r.get("event") == "rate_redis_error" and "NOSCRIPT" in r.get("error", ""))
    _wait(lambda: _mails(a, 1, source="127.0.0.9") and
          float(redis.cmd("HGET", "mxgate:rate:127.0.0.9", "t1") or 100) <= 96.1, "counted again")


def test_reload_moves_the_count_to_another_redis(sink, gateway, redis, tmp_path):
    from test_reload import conf_gateway, reload
    (tmp_path / "r2").mkdir()
    other = Redis(tmp_path / "r2").start()
    try:
        conf = "relay_domains = example.com\nrate_messages = 100\nlimits_redis = %s:%d\n"
        http = "%s:%d" % (HOST, free_port())
        gw = conf_gateway(gateway, tmp_path, conf % (HOST, redis.port), downstream=sink.addr, http_listen=http)
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 2, "connected")
        assert _mails(gw, 1, source="127.0.0.10") == [(250, "2.1.0")]
        _wait(lambda: redis.cmd("HGET", "mxgate:rate:127.0.0.10", "t1") is not None, "counted in the first")
        reload(gw, conf % (HOST, other.port))
        # each worker drops the first connection as it adopts the file, then connects anew
        _wait(lambda: len([r for r in gw.log_records() if r.get("event") == "rate_redis_closed"
                           and r.get("reason") == "reload"]) == 2, "both workers moved")
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 2, "connected to the second")
        assert _mails(gw, 2, source="127.0.0.11") == [(250, "2.1.0")] * 2
        _wait(lambda: other.cmd("HGET", "mxgate:rate:127.0.0.11", "t1") is not None, "counted in the second")
        assert redis.cmd("EXISTS", "mxgate:rate:127.0.0.11") == 0
        # a move is not an outage
        assert not [r for r in gw.log_records() if r.get("event") == "rate_redis_down"]
        reload(gw, "relay_domains = example.com\nrate_messages = 100\n")
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 0, "no Redis")
        failed_open = _metric(gw, "mxgate_rate_redis_failopen_total")
        assert _mails(gw, 1, source="127.0.0.12") == [(250, "2.1.0")]
        assert _metric(gw, "mxgate_rate_redis_failopen_total") == failed_open   # not asked, so not failed
    finally:
        other.kill()


def test_redis_absent_at_start_then_arriving(sink, gateway, tmp_path):
    port = free_port()
    gw = gateway(downstream=sink.addr, workers=2, rate_connections=100, limits_redis="%s:%d" % (HOST, port),
                 http_listen="%s:%d" % (HOST, free_port()))
    rec = gw.wait_record(lambda r: r.get("event") == "rate_redis_down")
    assert rec.get("reason") == "connect" and "refused" in rec.get("error", "").lower(), rec
    with Client(gw.port, source="127.0.0.14") as c:      # greeted at once: nothing to wait for
        assert c.greet(timeout=2).code == 220
    assert _metric(gw, "mxgate_rate_redis_failopen_total") >= 1
    r = Redis(tmp_path, port=port).start()
    try:
        _wait(lambda: _metric(gw, "mxgate_rate_redis_up") == 2, "connected once Redis came", timeout=15)
        with Client(gw.port, source="127.0.0.14") as c:
            assert c.greet().code == 220
        _wait(lambda: r.cmd("HGET", "mxgate:rate:127.0.0.14", "t0") is not None, "counted in Redis")
    finally:
        r.kill()


def test_an_error_reply_fails_open(sink, gateway, redis):
    a, _ = _fleet(gateway, sink, redis, rate_messages=2)
    redis.cmd("SET", "mxgate:rate:127.0.0.15", "not a hash")   # the script's HMGET fails: WRONGTYPE
    assert _mails(a, 3, source="127.0.0.15") == [(250, "2.1.0")] * 2 + [(450, "4.7.1")]   # the local count holds
    rec = a.wait_record(lambda r: r.get("event") == "rate_redis_error")
    assert "WRONGTYPE" in rec.get("error", ""), rec
    # the connect's read, then the first two MAILs' takes (answered after their 250s: they do not wait)
    _wait(lambda: _metric(a, 'mxgate_rate_redis_replies_total{result="error"}') >= 3, "three error replies")
    assert _metric(a, "mxgate_rate_redis_up") == 2                 # an error is not an outage
