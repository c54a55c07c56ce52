"""
Every limit crossed over the wire, with the reply (code and enhanced code) the
SMTP engine documents in core/smtp.h, and what happens to the session after.
"""
import re
import time
import urllib.request

import pytest

from mxtest import HOST, Client, Closed, free_port, make_message, new_msgid, split_received, transact


def _session(gw):
    c = Client(gw.port)
    c.ehlo()
    return c


def test_command_line_limit(sink, gateway):
    gw = gateway(downstream=sink.addr)
    with _session(gw) as c:
        at_limit = "NOOP " + "x" * (512 - 7)          # 512 octets with CRLF
        assert len(at_limit) + 2 == 512
        assert c.cmd(at_limit).code == 250
        over = "NOOP " + "x" * (513 - 7)              # 513 octets with CRLF
        r = c.cmd(over)
        assert r.code == 500 and r.esc == "5.5.2", r
        # The session goes on: the rest of the long line was not taken as a command.
        assert c.cmd("NOOP").code == 250
        mid = new_msgid("afterlong")
        res = transact(c, "sender@src.test", ["user@example.com"], make_message(mid))
        assert res.delivered, res
    assert sink.wait_message(mid)


@pytest.mark.parametrize("limit", [None, 5])
def test_recipient_limit(sink, gateway, limit):
    opts = {} if limit is None else {"recipient_limit": limit}
    n = limit or 100
    gw = gateway(downstream=sink.addr, **opts)
    mid = new_msgid("rcpts")
    with _session(gw) as c:
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        for i in range(n):
            r = c.cmd("RCPT TO:<u%d@example.com>" % i)
            assert r.code == 250, (i, r)
        r = c.cmd("RCPT TO:<u%d@example.com>" % n)
        assert r.code == 452 and r.esc == "4.5.3", r
        assert c.cmd("DATA").code == 354
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
    m = sink.wait_message(mid)
    assert m is not None and len(m.rcpts) == n


def test_declared_size_over_limit(sink, gateway):
    gw = gateway(downstream=sink.addr, message_size_limit=100000)
    with Client(gw.port) as c:
        ehlo = c.ehlo()
        assert "SIZE 100000" in ehlo.text.upper(), ehlo
        r = c.cmd("MAIL FROM:<sender@src.test> SIZE=100001")
        assert r.code == 552 and r.esc == "5.3.4", r
        r = c.cmd("MAIL FROM:<sender@src.test> SIZE=1000")
        assert r.code == 250, r


def test_undeclared_oversized_body(sink, gateway):
    gw = gateway(downstream=sink.addr, message_size_limit=100000)
    big = new_msgid("big")
    small = new_msgid("small")
    with _session(gw) as c:
        body = (b"b" * 98 + b"\r\n") * 1500               # 150 000 octets
        res = transact(c, "sender@src.test", ["user@example.com"], make_message(big, body=body))
        assert res.stage == "eod", res
        assert res.final.code == 552 and res.final.esc == "5.3.4", res
        # The connection is still usable.
        res = transact(c, "sender@src.test", ["user@example.com"], make_message(small))
        assert res.delivered, res
    assert sink.wait_message(small)
    time.sleep(0.3)
    assert not sink.find(big, accepted_only=False)


def test_body_line_length(sink, gateway):
    gw = gateway(downstream=sink.addr)
    ok1, ok2, bad = new_msgid("l1000"), new_msgid("ldot"), new_msgid("l1001")
    with _session(gw) as c:
        # 1000 octets with CRLF: the limit.
        r = transact(c, "sender@src.test", ["user@example.com"],
                     make_message(ok1, body=b"a" * 998 + b"\r\n"))
        assert r.delivered, r
        # 1000 octets unstuffed, 1001 on the wire: the stuffing dot does not count.
        r = transact(c, "sender@src.test", ["user@example.com"],
                     make_message(ok2, body=b"." + b"d" * 997 + b"\r\n"))
        assert r.delivered, r
        # 1001 octets: refused after the final dot, session usable.
        r = transact(c, "sender@src.test", ["user@example.com"],
                     make_message(bad, body=b"a" * 999 + b"\r\n"))
        assert r.stage == "eod" and r.final.code == 554 and r.final.esc == "5.5.2", r
        assert c.cmd("NOOP").code == 250
    m = sink.wait_message(ok2)
    assert m is not None and split_received(m.data)[1].endswith(b"\r\n." + b"d" * 997 + b"\r\n")
    assert sink.find(ok1)
    time.sleep(0.3)
    assert not sink.find(bad, accepted_only=False)


@pytest.mark.parametrize("bare", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_newline_in_body_rejected(sink, gateway, bare):
    gw = gateway(downstream=sink.addr)
    mid = new_msgid("bare")
    after = new_msgid("after")
    with _session(gw) as c:
        msg = make_message(mid, body=b"line one" + bare + b"line two\r\n")
        r = transact(c, "sender@src.test", ["user@example.com"], msg, stuff=False)
        assert r.stage == "eod" and r.final.code == 554 and r.final.esc == "5.5.2", r
        r = transact(c, "sender@src.test", ["user@example.com"], make_message(after))
        assert r.delivered, r
    assert sink.wait_message(after)
    assert not sink.find(mid, accepted_only=False)


def test_smtp_smuggling_is_not_split(sink, gateway):
    """A body with LF.CRLF / CRLF.LF hiding a second transaction is one
    message, refused whole; no downstream sees the smuggled one."""
    gw = gateway(downstream=sink.addr)
    outer, smuggled = new_msgid("outer"), new_msgid("smuggled")
    with _session(gw) as c:
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        assert c.cmd("RCPT TO:<user@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message(outer, body=b"hello\r\n")
               + b"\n.\r\nMAIL FROM:<admin@example.com>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
               + make_message(smuggled, subject="smuggled") + b"\r\n.\n"
               + b"more\r\n.\r\n")
        r = c.reply()
        assert r.code == 554 and r.esc == "5.5.2", r
        assert c.cmd("NOOP").code == 250
    time.sleep(0.5)
    assert not sink.find(smuggled, accepted_only=False)
    assert not sink.find(outer, accepted_only=False)
    assert not any(m.mail_from == "admin@example.com" for m in sink.all)


def test_bare_newline_normalize(sink, gateway):
    gw = gateway(downstream=sink.addr, bare_newline="normalize")
    mid = new_msgid("norm")
    with _session(gw) as c:
        msg = make_message(mid, body=b"one\ntwo\r\nx\n.y\r\nend\r\n")
        r = transact(c, "sender@src.test", ["user@example.com"], msg, stuff=False)
        assert r.delivered, r
    m = sink.wait_message(mid)
    assert m is not None
    body = split_received(m.data)[1]
    assert body.endswith(b"\r\n\r\none\r\ntwo\r\nx\r\n.y\r\nend\r\n"), body[-60:]
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_error_limit_421(sink, gateway):
    gw = gateway(downstream=sink.addr)
    with _session(gw) as c:
        for i in range(19):
            r = c.cmd("XYZZY %d" % i)
            assert r.code == 500 and r.esc == "5.5.2", (i, r)
        c.send("XYZZY 19\r\n")
        rest = c.rest_replies(timeout=5)
        assert rest, "no reply to the 20th bad command"
        assert rest[-1].code == 421 and rest[-1].esc == "4.7.0", rest
        assert all(x.code != 421 for x in rest[:-1]), rest
        assert c.wait_closed(5), "still open after 421"


def test_max_connections_per_ip(sink, gateway):
    gw = gateway(downstream=sink.addr, max_connections_per_ip=3, max_connections=100)
    time.sleep(0.2)
    held = []
    try:
        for _ in range(3):
            c = Client(gw.port)
            assert c.greet().code == 220
            held.append(c)
        extra = Client(gw.port)
        try:
            g = extra.greet()
            assert g.code == 421 and g.esc == "4.7.0", g
            assert extra.wait_closed(5)
        finally:
            extra.close()
        held.pop().cmd("QUIT")
        deadline = time.monotonic() + 5
        while True:
            with Client(gw.port) as again:
                g = again.greet()
                if g.code == 220:
                    break
            assert time.monotonic() < deadline, "slot not freed after a QUIT: %r" % g
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()


def test_max_connections(sink, gateway):
    gw = gateway(downstream=sink.addr, max_connections=2, max_connections_per_ip=100, workers=1)
    time.sleep(0.2)
    held = [Client(gw.port), Client(gw.port)]
    try:
        for c in held:
            assert c.greet().code == 220
        with Client(gw.port) as extra:
            try:
                g = extra.greet(timeout=5)
                assert g.code == 421, g
            except Closed:
                pass  # closed without a word is acceptable over the global limit
    finally:
        for c in held:
            c.close()


def test_command_timeout(sink, gateway):
    gw = gateway(downstream=sink.addr, command_timeout=2)
    with _session(gw) as c:
        t0 = time.monotonic()
        r = c.reply(timeout=8)
        took = time.monotonic() - t0
        assert r.code == 421, r
        assert 1.5 <= took <= 6, "421 after %.1f s with command_timeout 2" % took
        assert c.wait_closed(3)


def test_data_timeout(sink, gateway):
    gw = gateway(downstream=sink.addr, data_timeout=2)
    mid = new_msgid("stall")
    with _session(gw) as c:
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        assert c.cmd("RCPT TO:<user@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message(mid, body=b"half a message\r\n"))
        t0 = time.monotonic()
        r = c.reply(timeout=8)
        took = time.monotonic() - t0
        assert r.code == 421, r
        assert 1.5 <= took <= 6, took
        assert c.wait_closed(3)
    time.sleep(0.5)
    assert not sink.find(mid, accepted_only=False)


def test_http_request_as_command_is_dropped(sink, gateway):
    gw = gateway(downstream=sink.addr)
    with _session(gw) as c:
        c.send("GET / HTTP/1.1\r\n")
        rest = c.rest_replies(timeout=5)
        assert rest and rest[-1].code == 221 and rest[-1].esc == "2.7.0", rest
        assert c.wait_closed(3)


# ---------------------------------------------------------------- rates per client address


def _metrics(gw):
    with urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5) as r:
        return r.read().decode()


def test_rate_connections_holds_across_workers_and_spares_others(sink, gateway):
    # A flood from 127.0.0.2: ten connections one after another, spread by
    # SO_REUSEPORT over two workers; one count for the address, so six get
    # the greeting and the rest 421 4.7.0 (a count per worker would let up
    # to twelve in). 127.0.0.3 meanwhile is served as usual.
    gw = gateway(downstream=sink.addr, workers=2, rate_connections=6, http_listen="%s:%d" % (HOST, free_port()))
    codes = []
    for i in range(10):
        with Client(gw.port, source="127.0.0.2") as c:
            r = c.greet()
            codes.append((r.code, r.esc))
            if r.code == 220:
                c.cmd("QUIT")
            else:
                assert "per minute" in str(r), r
                c.wait_closed(5)
        if i == 5:
            with Client(gw.port, source="127.0.0.3") as other:
                assert other.greet().code == 220
                mid = new_msgid("rate-other")
                other.ehlo()
                assert transact(other, "a@src.test", ["user@example.com"], make_message(mid)).delivered
    assert [c for c, _ in codes[:6]] == [220] * 6 and codes[6:] == [(421, "4.7.0")] * 4, codes
    assert gw.wait_record(lambda r: r.get("event") == "refused" and r.get("reason") == "rate_connections"
                          and r.get("client") == "127.0.0.2")
    assert re.search(r'^mxgate_connections_refused_total\{reason="rate_connections"\} 4$', _metrics(gw), re.M)
    with Client(gw.port, source="127.0.0.3") as other:   # still served
        assert other.greet().code == 220


def test_rate_messages_and_recipients(sink, gateway):
    gw = gateway(downstream=sink.addr, rate_messages=3, rate_recipients=5)
    with Client(gw.port, source="127.0.0.2") as c:
        c.ehlo()
        for i in range(3):
            assert c.cmd("MAIL FROM:<a@src.test>").code == 250
            assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<a@src.test>")
        assert (r.code, r.esc) == (450, "4.7.1") and "per minute" in str(r), r
        # the session goes on; recipients are counted the same way, from
        # another address (its own buckets)
    with Client(gw.port, source="127.0.0.3") as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@src.test>").code == 250
        rs = [c.cmd("RCPT TO:<u%d@example.com>" % i) for i in range(7)]
        assert [r.code for r in rs] == [250] * 5 + [450, 450], rs
        assert rs[5].esc == "4.7.1"
        assert c.cmd("DATA").code == 354
        mid = new_msgid("rate-rcpts")
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
    m = sink.wait_message(mid)
    assert len(m.rcpts) == 5
    rec = gw.wait_record(lambda r: r.get("event") == "tx" and r.get("rcpt.6.reply", "").startswith("450 4.7.1"))
    assert rec, gw.log_tail()


def test_rate_allow_exempts_a_network(sink, gateway):
    gw = gateway(downstream=sink.addr, rate_connections=2, rate_allow="127.0.0.2/32")
    for _ in range(5):
        with Client(gw.port, source="127.0.0.2") as c:
            assert c.greet().code == 220
            c.cmd("QUIT")
    codes = []
    for _ in range(3):
        with Client(gw.port, source="127.0.0.3") as c:
            codes.append(c.greet().code)
    assert codes == [220, 220, 421], codes


def test_rate_refills_evenly(sink, gateway):
    # 120 a minute: the bucket holds 120, and two tokens a second come back
    gw = gateway(downstream=sink.addr, rate_connections=120)

    def until_refused(limit):
        t0, accepted = time.monotonic(), 0
        for _ in range(limit):
            with Client(gw.port, source="127.0.0.4") as c:
                if c.greet().code != 220:
                    return accepted, time.monotonic() - t0
                accepted += 1
        raise AssertionError("never refused after %d connections" % limit)

    n, took = until_refused(300)
    assert 120 <= n <= 120 + 2 * took + 1, (n, took)
    time.sleep(1.5)                                   # three tokens back
    n, took = until_refused(50)
    assert 3 <= n <= 3 + 2 * took + 1, (n, took)
