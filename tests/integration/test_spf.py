"""
SPF over the wire: mxgate -> SPF helper -> unbound on 127.0.0.1 (zone data
given per test), with the client connecting from 127.0.0.1 (or ::1). Each
result, each policy, the trace headers on delivered mail, the cache, a slow
DNS server that must not delay other sessions on the same worker, and the
helper dying under load.

DNS goes only to the unbound these tests start; the gateway is given it with
--dns-server.
"""
import os
import signal
import socket
import subprocess
import time

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import Client, make_message, new_msgid, transact

pytestmark = pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")

ZONE = {
    "pass.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "fail.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
    "softfail.test": [("TXT", "v=spf1 ~all")],
    "neutral.test": [("TXT", "v=spf1 ?all")],
    "none.test": [("A", "192.0.2.7")],
    "twice.test": [("TXT", "v=spf1 +all"), ("TXT", "v=spf1 -all")],
    "include.test": [("TXT", "v=spf1 include:pass.test -all")],
    "redirect.test": [("TXT", "v=spf1 redirect=pass.test")],
    "macro.test": [("TXT", "v=spf1 exists:%{ir}.%{l}.in.macro.test -all")],
    "1.0.0.127.alice.in.macro.test": [("A", "127.0.0.2")],
    "loop.test": [("TXT", "v=spf1 " + " ".join("include:l%d.loop.test" % i for i in range(11)) + " -all")],
    "v6.test": [("TXT", "v=spf1 ip6:::1 -all")],
    "helo.pass.test": [("TXT", "v=spf1 ip4:127.0.0.1 ip6:::1 -all")],
    "exp.test": [("TXT", "v=spf1 -all exp=why.exp.test")],
    "why.exp.test": [("TXT", "%{i} may not send for %{d}")],
    "temp.test": [("TXT", "v=spf1 a:broken.test -all")],
    "cached.test": [("TXT", "v=spf1 ip4:127.0.0.1 ip6:::1 -all", 600)],
}
for i in range(11):
    ZONE["l%d.loop.test" % i] = [("TXT", "v=spf1 ?all")]

SERVFAIL = ["servfail.test", "broken.test"]


@pytest.fixture
def dns(tmp_path):
    with DnsServer(tmp_path, ZONE, servfail=SERVFAIL) as d:
        yield d


def spf_gateway(gateway, sink, dns, **opts):
    o = dict(downstream=sink.addr, filters="limits, relay, recipients, spf", dns_server=dns.addr,
             dns_timeout=1, spf_timeout=10)
    o.update(opts)
    return gateway(**o)


def headers(m):
    """The delivered message's header block, unfolded, as text."""
    text = m.wire.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0]
    return head.replace("\r\n\t", " ").replace("\r\n ", " ")


def deliver(gw, sender, helo="client.test", rcpt="user@example.com"):
    mid = new_msgid("spf")
    with Client(gw.port) as c:
        c.greet()
        c.cmd("EHLO " + helo)
        res = transact(c, sender, [rcpt], make_message(mid))
        c.cmd("QUIT")
    return mid, res


@pytest.mark.parametrize("domain,result", [
    ("pass.test", "pass"),
    ("softfail.test", "softfail"),
    ("neutral.test", "neutral"),
    ("none.test", "none"),
    ("twice.test", "permerror"),
    ("loop.test", "permerror"),
    ("include.test", "pass"),
    ("redirect.test", "pass"),
    ("macro.test", "pass"),
])
def test_accepted_results_are_tagged(sink, gateway, dns, domain, result):
    gw = spf_gateway(gateway, sink, dns)
    mid, res = deliver(gw, "alice@" + domain)
    assert res.delivered, res
    m = sink.wait_message(mid)
    h = headers(m)
    assert "\r\nReceived-SPF: %s " % result in "\r\n" + h, h
    assert "mx.test: mx.test:" not in h, "the comment names the receiver once: %r" % h
    assert "Authentication-Results: mx.test; spf=%s smtp.mailfrom=alice@%s" % (result, domain) in h, h
    # trace headers come before our Received, in this order
    assert h.index("Received-SPF:") < h.index("Authentication-Results:") < h.index("Received: from")
    if result == "pass":
        assert "client-ip=127.0.0.1" in h, h
    # client-chosen values are quoted, so they cannot add key=value pairs
    assert 'envelope-from="alice@%s"; helo=client.test;' % domain in h, h
    assert gw.wait_log(r"event=tx .*spf=%s " % result)


def test_fail_is_refused_at_rcpt(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns)
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@fail.test>").code == 250
        r = c.cmd("RCPT TO:<user@example.com>")
        assert r.code == 550 and r.esc == "5.7.23", r
        # every recipient of the transaction gets the same answer
        r = c.cmd("RCPT TO:<other@example.com>")
        assert r.code == 550 and r.esc == "5.7.23", r
        # the session goes on; a sender that passes is accepted
        assert c.cmd("RSET").code == 250
        mid = new_msgid("afterfail")
        assert transact(c, "bob@pass.test", ["user@example.com"], make_message(mid)).delivered
    assert sink.wait_message(mid)
    assert not [m for m in sink.messages if m.mail_from == "alice@fail.test"]


def test_explanation_in_the_reply(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns)
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@exp.test>").code == 250
        r = c.cmd("RCPT TO:<user@example.com>")
        assert r.code == 550 and r.esc == "5.7.23", r
        assert "127.0.0.1 may not send for exp.test" in r.text, r


def test_temperror_servfail_and_server_down(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns)
    for sender in ("alice@servfail.test", "alice@temp.test"):
        with Client(gw.port) as c:
            c.ehlo()
            assert c.cmd("MAIL FROM:<%s>" % sender).code == 250
            r = c.cmd("RCPT TO:<user@example.com>")
            assert r.code == 451 and r.esc == "4.4.3", (sender, r)
    dns.stop()
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@neutral.test>").code == 250
        r = c.cmd("RCPT TO:<user@example.com>", timeout=15)
        assert r.code == 451 and r.esc == "4.4.3", r


@pytest.mark.parametrize("opts,sender,code,esc", [
    ({"spf_fail": "accept"}, "alice@fail.test", 250, None),
    ({"spf_fail": "tempfail"}, "alice@fail.test", 451, "4.7.23"),
    ({"spf_softfail": "reject"}, "alice@softfail.test", 550, "5.7.23"),
    ({"spf_neutral": "reject"}, "alice@neutral.test", 550, "5.7.23"),
    ({"spf_none": "tempfail"}, "alice@none.test", 451, "4.7.23"),
    ({"spf_permerror": "reject"}, "alice@twice.test", 550, "5.7.24"),
    ({"spf_temperror": "accept"}, "alice@servfail.test", 250, None),
])
def test_policies(sink, gateway, dns, opts, sender, code, esc):
    gw = spf_gateway(gateway, sink, dns, **opts)
    mid, res = deliver(gw, sender)
    r = res.rcpt[0]
    assert r.code == code and (esc is None or r.esc == esc), r
    if code == 250:
        assert res.delivered, res
        assert "Received-SPF: " in headers(sink.wait_message(mid))


def test_stage_data(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns, spf_stage="data")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@fail.test>").code == 250
        assert c.cmd("RCPT TO:<user@example.com>").code == 250
        r = c.cmd("DATA")
        assert r.code == 550 and r.esc == "5.7.23", r
        assert c.cmd("RSET").code == 250
    assert not sink.messages


def test_null_sender_checks_helo(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns)
    mid, res = deliver(gw, "", helo="helo.pass.test")
    assert res.delivered, res
    h = headers(sink.wait_message(mid))
    assert "Authentication-Results: mx.test; spf=pass smtp.helo=helo.pass.test" in h, h


def test_received_spf_quotes_client_text(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns)
    mid, res = deliver(gw, "alice@softfail.test", helo="[127.0.0.1]")
    assert res.delivered, res
    h = headers(sink.wait_message(mid))
    assert 'helo="[127.0.0.1]";' in h, h


def test_ipv6_client(sink, gateway, dns):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    from mxtest import free_port
    port = free_port()
    # the readiness probe uses the IPv4 listener (the last one)
    spf_gateway(gateway, sink, dns, listen="[::1]:%d, 127.0.0.1:%d" % (port, free_port()))
    mid = new_msgid("v6")
    with Client(port, host="::1") as c:
        c.ehlo()
        res = transact(c, "alice@v6.test", ["user@example.com"], make_message(mid))
        assert res.delivered, res
        res = transact(c, "alice@pass.test", ["user@example.com"], make_message(new_msgid("v6f")))
        assert res.rcpt[0].code == 550, res   # pass.test allows only 127.0.0.1
    h = headers(sink.wait_message(mid))
    assert "spf=pass" in h and "client-ip=::1" in h, h


def test_cached_results_skip_dns(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns, workers=1)
    mid, res = deliver(gw, "alice@cached.test")
    assert res.delivered
    before = dns.query_count()
    for i in range(5):
        mid, res = deliver(gw, "alice@cached.test")
        assert res.delivered, res
        assert "spf=pass" in headers(sink.wait_message(mid))
    assert dns.query_count() == before
    gw.stop()
    assert gw.wait_log(r"event=stop .*spf_checks=6 spf_cached=5 spf_temperrors=0")


def test_no_cache_asks_every_time(sink, gateway, dns):
    """spf_cache_size = 0: each transaction is checked anew (the helper's
    DNS cache still answers, so count checks, not queries)."""
    gw = spf_gateway(gateway, sink, dns, workers=1, spf_cache_size=0)
    for i in range(3):
        mid, res = deliver(gw, "alice@cached.test")
        assert res.delivered, res
    gw.stop()
    assert gw.wait_log(r"event=stop .*spf_checks=3 spf_cached=0 ")


def test_slow_dns_does_not_stall_the_worker(sink, gateway, dns):
    """One worker: while a session waits for a paused DNS server, another
    session's NOOP round trips stay fast."""
    gw = spf_gateway(gateway, sink, dns, workers=1, dns_timeout=5, spf_timeout=20)
    a = Client(gw.port)
    b = Client(gw.port)
    try:
        a.ehlo()
        b.ehlo()
        dns.pause()
        assert a.cmd("MAIL FROM:<alice@neutral.test>").code == 250
        a.send(b"RCPT TO:<user@example.com>\r\n")  # waits for SPF
        time.sleep(0.3)
        rtts = []
        for _ in range(20):
            t0 = time.monotonic()
            assert b.cmd("NOOP").code == 250
            rtts.append(time.monotonic() - t0)
        # and a whole transaction on b that needs no DNS (a cached result
        # would do; a relay refusal needs none)
        r = b.cmd("MAIL FROM:<x@pass.test>")
        assert r.code == 250
        assert b.cmd("RCPT TO:<user@elsewhere.test>").code == 550
        worst = max(rtts)
        print("NOOP round trips while SPF waits: max %.0f us, median %.0f us"
              % (worst * 1e6, sorted(rtts)[10] * 1e6))
        assert worst < 0.5, rtts     # generous: the DNS wait is seconds
        dns.resume()
        r = a.reply(timeout=15)
        assert r.code == 250, r
    finally:
        dns.resume()
        a.close()
        b.close()


def _helper_pid(gw):
    out = subprocess.run(["pgrep", "-P", str(gw.pid)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def _wait_helper(gw, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _helper_pid(gw)
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError("no SPF helper process under the gateway")


def _deliver_within(gw, sender, timeout):
    """Retries until a message is delivered or timeout seconds pass (a
    helper restarting, or working through a backlog)."""
    deadline = time.monotonic() + timeout
    while True:
        mid, res = deliver(gw, sender)
        if res.delivered or time.monotonic() > deadline:
            return mid, res
        time.sleep(0.3)


def test_helper_death_gives_temperror_and_restarts(sink, gateway, dns):
    gw = spf_gateway(gateway, sink, dns, workers=1, dns_timeout=5)
    pid = _wait_helper(gw)
    with Client(gw.port) as c:
        c.ehlo()
        dns.pause()
        assert c.cmd("MAIL FROM:<alice@neutral.test>").code == 250
        c.send(b"RCPT TO:<user@example.com>\r\n")
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        r = c.reply(timeout=5)
        assert r.code == 451 and r.esc == "4.4.3", r
        dns.resume()
    # a new helper takes over; the gateway never stopped serving
    mid, res = _deliver_within(gw, "alice@pass.test", 10)
    assert res.delivered, res
    new = _helper_pid(gw)
    assert new and new != pid
    assert gw.wait_log("event=spf_helper_exited")


def test_spf_off_adds_no_headers(sink, gateway, dns):
    gw = gateway(downstream=sink.addr)
    mid, res = deliver(gw, "alice@fail.test")
    assert res.delivered
    assert "Received-SPF" not in headers(sink.wait_message(mid))
    assert _helper_pid(gw) is None


def test_spf_timeout(sink, gateway, dns):
    """A check that outlives spf_timeout is a temperror, given at the
    timeout, not when the DNS server finally answers."""
    gw = spf_gateway(gateway, sink, dns, workers=1, dns_timeout=10, spf_timeout=1)
    with Client(gw.port) as c:
        c.ehlo()
        dns.pause()
        try:
            assert c.cmd("MAIL FROM:<alice@neutral.test>").code == 250
            t0 = time.monotonic()
            r = c.cmd("RCPT TO:<user@example.com>", timeout=8)
            waited = time.monotonic() - t0
        finally:
            dns.resume()
        assert r.code == 451 and r.esc == "4.4.3", r
        assert 0.7 < waited < 3, waited
        # the session goes on, and a late reply from the helper is dropped
        assert c.cmd("RSET").code == 250
        assert c.cmd("NOOP").code == 250


def test_helper_backlog_full_is_a_temperror(sink, gateway, dns):
    """With the helper stopped, requests pile up in its socket until the
    socket is full. A check that cannot be sent is a temperror at once
    ("overloaded"), never a stall; when the helper runs again, its late
    answers to cancelled checks are dropped and checks work again."""
    gw = spf_gateway(gateway, sink, dns, workers=1, spf_cache_size=0, spf_timeout=30)
    pid = _wait_helper(gw)
    os.kill(pid, signal.SIGSTOP)
    try:
        with Client(gw.port) as c:
            c.ehlo()
            # every MAIL sends one request (no cache); RSET drops its check
            sent, full = 0, None
            while full is None and sent < 20000:
                c.send("".join("MAIL FROM:<u%d@neutral.test>\r\nRSET\r\n" % (sent + k) for k in range(200)))
                for _ in range(400):
                    assert c.reply(timeout=10).code == 250
                sent += 200
                full = gw.wait_log(r"event=spf_send_failed", timeout=0)
            assert full, "the helper's socket never filled after %d requests" % sent
            assert c.cmd("MAIL FROM:<last@neutral.test>").code == 250
            t0 = time.monotonic()
            r = c.cmd("RCPT TO:<user@example.com>", timeout=10)
            assert r.code == 451 and r.esc == "4.4.3", r
            assert time.monotonic() - t0 < 2
            assert c.cmd("RSET").code == 250
    finally:
        os.kill(pid, signal.SIGCONT)
    # the helper works through its backlog; checks succeed again
    mid, res = _deliver_within(gw, "alice@pass.test", 20)
    assert res.delivered, res
    assert "pass" in headers(sink.wait_message(mid)).split("Received-SPF:", 1)[1].split()[0]
    assert _helper_pid(gw) == pid
