"""
postscreen's protocol tests over the wire, beside the early-talker check
(test_limits.py): a client that pipelines behind HELO/EHLO before the reply
(PIPELINING not yet offered), a non-SMTP command (HTTP, a mail header), and
a command line ended by a bare LF. Each has its action (ignore, enforce,
drop: pipelining_action, non_smtp_command_action, bare_newline_action), a
counter (mxgate_protocol_violations_total{test}) and a log line
(event=protocol_violation), and a client that fails one never enters the
pass cache.
"""
import re
import time
import urllib.request

import pytest

from mxtest import HOST, Client, free_port, make_message, new_msgid, transact


def _metrics(gw):
    with urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5) as r:
        return r.read().decode()


def _violations(gw, test):
    m = re.search(r'^mxgate_protocol_violations_total\{test="%s"\} (\d+)$' % test, _metrics(gw), re.M)
    return int(m.group(1))


def _gw(gateway, sink, **opts):
    return gateway(downstream=sink.addr, http_listen="%s:%d" % (HOST, free_port()), **opts)


def _record(gw, test, action):
    return gw.wait_record(lambda r: r.get("event") == "protocol_violation" and r.get("test") == test
                          and r.get("action") == action)


@pytest.mark.parametrize("action", ["ignore", "enforce", "drop"])
def test_pipelining_before_the_ehlo_reply(sink, gateway, action):
    gw = _gw(gateway, sink, pipelining_action=action)
    mid = new_msgid("pipe-" + action)
    with Client(gw.port) as c:
        assert c.greet().code == 220
        # EHLO and MAIL in one segment: MAIL left before the EHLO's reply came
        c.send("EHLO bot.example\r\nMAIL FROM:<a@src.test>\r\n")
        r = c.reply()
        if action == "drop":
            assert (r.code, r.esc) == (521, "5.5.1"), r
            assert c.wait_closed(3)
        else:
            assert r.code == 250, r                       # the EHLO
            assert c.reply().code == 250                  # the MAIL
            rcpt = c.cmd("RCPT TO:<user@example.com>")
            if action == "enforce":                       # may go on, gets no mail in
                assert (rcpt.code, rcpt.esc) == (550, "5.5.1"), rcpt
                assert c.cmd("DATA").code == 554
            else:
                assert rcpt.code == 250
                assert c.cmd("DATA").code == 354
                c.send(make_message(mid) + b".\r\n")
                assert c.reply().code == 250
                sink.wait_message(mid)
            c.cmd("QUIT")
    rec = _record(gw, "pipelining", action)
    assert rec and rec.get("client") == HOST, gw.log_tail()
    assert _violations(gw, "pipelining") == 1
    if action == "drop":
        assert gw.wait_record(lambda r: r.get("event") == "disconnect" and r.get("reason") == "protocol")
    # a client that waits for the EHLO reply, then pipelines as offered, passes
    with Client(gw.port) as c:
        c.ehlo()
        mid2 = new_msgid("pipe-ok")
        c.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(make_message(mid2) + b".\r\n")
        assert c.reply().code == 250
    sink.wait_message(mid2)
    assert _violations(gw, "pipelining") == 1


@pytest.mark.parametrize("action", ["ignore", "enforce", "drop"])
def test_non_smtp_command(sink, gateway, action):
    gw = _gw(gateway, sink, non_smtp_command_action=action)
    with Client(gw.port) as c:
        c.ehlo()
        r = c.cmd("Subject: hello")
        if action == "drop":
            assert (r.code, r.esc) == (221, "2.7.0"), r
            assert c.wait_closed(3)
        else:
            assert (r.code, r.esc) == (500, "5.5.2"), r
            assert c.cmd("MAIL FROM:<a@src.test>").code == 250
            rcpt = c.cmd("RCPT TO:<user@example.com>")
            assert (rcpt.code, rcpt.esc) == ((550, "5.5.1") if action == "enforce" else (250, "2.1.5")), rcpt
            c.cmd("QUIT")
    assert _record(gw, "non_smtp_command", action)
    assert _violations(gw, "non_smtp_command") == 1
    with Client(gw.port) as c:          # HTTP counts as well
        c.greet()
        c.send("GET / HTTP/1.1\r\n")
        r = c.reply()
        assert r.code == (221 if action == "drop" else 500), r
    assert _violations(gw, "non_smtp_command") == 2


@pytest.mark.parametrize("action,bare", [("ignore", "reject"), ("enforce", "normalize"), ("drop", "normalize")])
def test_bare_newline_in_a_command(sink, gateway, action, bare):
    gw = _gw(gateway, sink, bare_newline_action=action, bare_newline=bare)
    with Client(gw.port) as c:
        c.greet()
        c.send("EHLO bare.example\n")
        r = c.reply()
        if action == "drop":
            assert (r.code, r.esc) == (521, "5.5.1"), r
            assert c.wait_closed(3)
        elif bare == "reject":
            assert (r.code, r.esc) == (500, "5.5.2"), r          # bare_newline decides
        else:
            assert r.code == 250, r                               # normalized: a command
            assert c.cmd("MAIL FROM:<a@src.test>").code == 250
            rcpt = c.cmd("RCPT TO:<user@example.com>")
            assert (rcpt.code, rcpt.esc) == (550, "5.5.1"), rcpt
    assert _record(gw, "bare_newline", action)
    assert _violations(gw, "bare_newline") == 1
    # counted once per session, however many lines (and before any reply
    # to them leaves: once a reply is in, the count is)
    with Client(gw.port) as c:
        c.greet()
        c.send("NOOP\nNOOP\n")
        c.reply()
        if action != "drop":
            c.reply()
    assert _violations(gw, "bare_newline") == 2


def test_a_client_that_failed_a_test_does_not_enter_the_pass_cache(sink, gateway, tmp_path):
    from dnsserver import DnsServer, unbound_available
    if not unbound_available():
        pytest.fail("unbound is not installed (make deps installs it)")
    with DnsServer(tmp_path, {"bl.example": [("A", "192.0.2.1")]}) as dns:
        gw = _gw(gateway, sink, filters="limits, relay, dnsbl", dnsbl_sites="bl.example",
                 dns_server="%s:%d" % (HOST, dns.port), pass_cache_ttl=3600, bare_newline="normalize")

        def session(line_end):
            with Client(gw.port, source="127.0.0.2") as c:
                c.greet()
                c.send("EHLO c.example" + line_end)
                c.reply()
                mid = new_msgid("pc")
                assert transact(c, "a@src.test", ["user@example.com"], make_message(mid)).delivered
                assert c.cmd("QUIT").code == 221

        def pass_cached():
            m = re.search(r'^mxgate_dnsbl_lookups_total\{result="pass_cache"\} (\d+)$', _metrics(gw), re.M)
            return int(m.group(1))

        def closed(n):                   # the pass is written at the session's close, after its 221
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if sum(1 for r in gw.log_records() if r.get("event") == "disconnect"
                       and r.get("client") == "127.0.0.2") >= n:
                    return
                time.sleep(0.02)
            raise AssertionError("session %d never closed:\n%s" % (n, gw.log_tail()))

        session("\n")                    # bare LF: counted (ignore), asked, not remembered
        session("\r\n")                  # asked again, passes, remembered
        closed(2)
        session("\r\n")                  # from the pass cache
        assert pass_cached() == 1, gw.log_tail()
