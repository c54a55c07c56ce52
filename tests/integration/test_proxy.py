"""
The PROXY protocol over the wire (proxy_protocol, proxy_trusted,
proxy_timeout): v1 and v2 headers for IPv4 and IPv6, LOCAL and UNKNOWN,
every kind of bad header, a header from an untrusted source, a header split
across reads and sent slowly, and the header's address used for the logs,
Received:, the per-IP limit and the metrics.

A refused header closes the connection without a greeting and without a
reply (the peer is a broken balancer or not a balancer); it is logged
(event=proxy_refused error=...) and counted
(mxgate_proxy_errors_total{error=...}).
"""
import socket
import struct
import time

import pytest

from mxtest import Client, make_message, new_msgid, split_received, transact

from test_ops import metrics, ops_gateway

V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd=1, fam=0x11, src="192.0.2.10", dst="198.51.100.1", sport=40000, dport=25, tlvs=b"", length=None,
       block=None):
    """A v2 header: cmd 0 LOCAL, 1 PROXY; fam 0x11 TCP4, 0x21 TCP6, 0x00 UNSPEC."""
    if block is None:
        if fam == 0x11:
            block = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
            block += struct.pack("!HH", sport, dport)
        elif fam == 0x21:
            block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            block += struct.pack("!HH", sport, dport)
        else:
            block = b""
    body = block + tlvs
    n = len(body) if length is None else length
    return V2SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", n) + body


def tlv(t, value):
    return bytes([t]) + struct.pack("!H", len(value)) + value


def proxy_gateway(gateway, sink, **opts):
    o = dict(proxy_protocol="any", downstream=sink.addr, workers=1)
    o.update(opts)
    return ops_gateway(gateway, None, **o)


def session_through(gw, header, rcpt="user@example.com", source=None, split=None, pause=0.0):
    """Send the header (whole, or in pieces of `split` octets with `pause`
    between them), then one message; the sink's copy's msgid."""
    with Client(gw.port, source=source) as c:
        if split:
            for i in range(0, len(header), split):
                c.send(header[i:i + split])
                time.sleep(pause)
        else:
            c.send(header)
        g = c.greet()
        assert g.code == 220, g
        c.ehlo()
        msgid = new_msgid("proxy")
        res = transact(c, "sender@src.test", [rcpt], make_message(msgid))
        assert res.delivered, res
        assert c.cmd("QUIT").code == 221
    return msgid


def received_from(sink, msgid):
    m = sink.wait_message(msgid)
    assert m is not None, "the sink never got %s" % msgid
    rcvd, _ = split_received(m.data)
    assert rcvd is not None
    return rcvd.decode()


def refused(gw, data, error, pause_after=None):
    """Send data; the connection must close with no byte back, and the log
    and the counter must name the error."""
    before = metrics(gw)
    with Client(gw.port) as c:
        c.send(data)
        assert c.wait_closed(timeout=8), "still open after %r" % data
        assert bytes(c.buf) == b"", "no greeting, no reply: got %r" % bytes(c.buf)
    key = 'mxgate_proxy_errors_total{error="%s"}' % error
    deadline = time.monotonic() + 3
    while metrics(gw).get(key, 0) != before.get(key, 0) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = metrics(gw)
    assert after.get(key, 0) == before.get(key, 0) + 1, key
    assert after['mxgate_connections_refused_total{reason="proxy"}'] == \
        before['mxgate_connections_refused_total{reason="proxy"}'] + 1
    assert gw.wait_log(r"event=proxy_refused .*error=%s\b" % error)


# ---- good headers ----


def test_v1_tcp4_and_tcp6_name_the_client(sink, gateway):
    gw = proxy_gateway(gateway, sink, proxy_protocol="v1")
    msgid = session_through(gw, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 25\r\n")
    rcvd = received_from(sink, msgid)
    assert "([192.0.2.10])" in rcvd, rcvd
    assert gw.wait_log(r"event=tx .*client=192\.0\.2\.10 port=40000 ")
    assert gw.wait_log(r"event=disconnect .*client=192\.0\.2\.10 port=40000 ")
    msgid = session_through(gw, b"PROXY TCP6 2001:db8::7 2001:db8::1 41000 25\r\n")
    rcvd = received_from(sink, msgid)
    assert "([IPv6:2001:db8::7])" in rcvd, rcvd
    assert gw.wait_log(r"event=tx .*client=2001:db8::7 port=41000 ")
    m = metrics(gw)
    assert m['mxgate_proxy_headers_total{kind="v1"}'] == 2


def test_v2_tcp4_tcp6_with_tlvs(sink, gateway):
    gw = proxy_gateway(gateway, sink, proxy_protocol="v2")
    tlvs = tlv(0x01, b"smtp") + tlv(0x02, b"mx.example.com") + tlv(0x05, b"x" * 128) + tlv(0x04, b"")
    msgid = session_through(gw, v2(src="203.0.113.9", tlvs=tlvs))
    assert "([203.0.113.9])" in received_from(sink, msgid)
    msgid = session_through(gw, v2(fam=0x21, src="2001:db8:1::9", dst="2001:db8::25"))
    assert "([IPv6:2001:db8:1::9])" in received_from(sink, msgid)
    assert metrics(gw)['mxgate_proxy_headers_total{kind="v2"}'] == 2


def test_local_and_unknown_keep_the_socket_address(sink, gateway):
    gw = proxy_gateway(gateway, sink)
    before = metrics(gw)['mxgate_proxy_headers_total{kind="local"}']  # the start-up probe's
    for header in (v2(cmd=0, fam=0x00), v2(cmd=1, fam=0x00), b"PROXY UNKNOWN\r\n",
                   b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"):
        msgid = session_through(gw, header)
        assert "([127.0.0.1])" in received_from(sink, msgid)
    assert metrics(gw)['mxgate_proxy_headers_total{kind="local"}'] == before + 4


def test_header_split_at_every_octet_and_slowly(sink, gateway):
    gw = proxy_gateway(gateway, sink)
    header = b"PROXY TCP4 192.0.2.77 198.51.100.1 1234 25\r\n"
    msgid = session_through(gw, header, split=1, pause=0.02)
    assert "([192.0.2.77])" in received_from(sink, msgid)
    header = v2(src="192.0.2.78", tlvs=tlv(0x01, b"smtp"))
    msgid = session_through(gw, header, split=3, pause=0.05)
    assert "([192.0.2.78])" in received_from(sink, msgid)


def test_pipelined_commands_after_the_header(sink, gateway):
    """The header and EHLO in one segment: the header is taken exactly,
    EHLO answered after the greeting."""
    gw = proxy_gateway(gateway, sink)
    with Client(gw.port) as c:
        c.send(b"PROXY TCP4 192.0.2.5 198.51.100.1 5555 25\r\nEHLO client.test\r\n")
        assert c.greet().code == 220
        r = c.reply()
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    # With greeting_delay, talking before the greeting is refused as ever.
    gw2 = proxy_gateway(gateway, sink, greeting_delay=300)
    with Client(gw2.port) as c:
        c.send(b"PROXY TCP4 192.0.2.6 198.51.100.1 5555 25\r\nEHLO client.test\r\n")
        r = c.reply()
        assert r.code == 554, r
    assert gw2.wait_log(r"client=192\.0\.2\.6")


# ---- bad headers ----

BAD = [
    (b"EHLO client.test\r\n", "not_proxy"),
    (b"\x16\x03\x01\x02\x00\x01", "not_proxy"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "bad_v1_syntax"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad_v1_syntax"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad_address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad_address"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "bad_address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad_port"),
    (b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n", "v1_too_long"),
    (V2SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12, "bad_v2_version"),
    (V2SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12, "bad_v2_command"),
    (V2SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12, "unsupported_family"),
    (V2SIG + b"\x21\x11\x00\x08" + b"\x00" * 8, "v2_too_short"),
    (V2SIG + b"\x21\x11\xff\xff", "v2_oversized"),
    (None, "bad_v2_tlv"),
]


@pytest.mark.parametrize("data,error", BAD, ids=[e + "-%d" % i for i, (_, e) in enumerate(BAD)])
def test_bad_header_closes_without_a_greeting(sink, gateway, data, error):
    gw = proxy_gateway(gateway, sink)
    if data is None:  # a TLV that runs past the declared length
        data = v2(tlvs=tlv(0x01, b"abcdef"), length=12 + 4)
    refused(gw, data, error)
    # Nothing else is affected: the next client is served.
    msgid = session_through(gw, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 25\r\n")
    assert "([192.0.2.10])" in received_from(sink, msgid)


def test_one_version_only(sink, gateway):
    gw = proxy_gateway(gateway, sink, proxy_protocol="v2")
    refused(gw, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 25\r\n", "not_proxy")
    gw1 = proxy_gateway(gateway, sink, proxy_protocol="v1")
    refused(gw1, v2(), "not_proxy")


def test_slow_truncated_and_missing_header(sink, gateway):
    gw = proxy_gateway(gateway, sink, proxy_timeout=1)
    # Half a header, then nothing: closed at proxy_timeout, no greeting.
    t0 = time.monotonic()
    refused(gw, b"PROXY TCP4 192.0.2.10 ", "timeout")
    assert 0.8 < time.monotonic() - t0 < 5
    # No header at all (a client that waits for the greeting): the same.
    refused(gw, b"", "timeout")
    # A header cut short by the peer closing.
    before = metrics(gw)
    with Client(gw.port) as c:
        c.send(v2()[:20])
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(timeout=5)
        assert bytes(c.buf) == b""
    assert gw.wait_log(r"event=proxy_refused .*error=closed")
    assert metrics(gw)['mxgate_proxy_errors_total{error="closed"}'] == \
        before['mxgate_proxy_errors_total{error="closed"}'] + 1
    assert metrics(gw)['mxgate_timeouts_total{kind="proxy"}'] == 2


def test_a_drip_fed_header_is_timed_as_a_whole(sink, gateway):
    """proxy_timeout bounds the whole header, not each read."""
    gw = proxy_gateway(gateway, sink, proxy_timeout=1)
    header = b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 25\r\n"
    with Client(gw.port) as c:
        t0 = time.monotonic()
        closed = False
        for i in range(len(header)):
            try:
                c.send(header[i:i + 1])
            except OSError:
                closed = True
                break
            if c._fill(time.monotonic() + 0.1) == 0:
                closed = True
                break
        assert closed or c.wait_closed(timeout=3)
        assert time.monotonic() - t0 < 3
        assert bytes(c.buf) == b""
    assert gw.wait_log(r"event=proxy_refused .*error=timeout")


# ---- trusted and untrusted sources ----


def test_untrusted_source_is_served_directly_and_may_not_send_a_header(sink, gateway):
    # Only 127.0.0.2 is a balancer: it must send the header; 127.0.0.1 is a
    # client like any other, and a header from it is refused.
    gw = proxy_gateway(gateway, sink, proxy_trusted="127.0.0.2/32")
    with Client(gw.port) as c:
        assert c.greet().code == 220
        c.ehlo()
        msgid = new_msgid("direct")
        assert transact(c, "sender@src.test", ["user@example.com"], make_message(msgid)).delivered
        c.cmd("QUIT")
    assert "([127.0.0.1])" in received_from(sink, msgid)
    with Client(gw.port) as c:
        assert c.greet().code == 220
        r = c.cmd("PROXY TCP4 192.0.2.10 198.51.100.1 40000 25")
        assert r.code == 554 and "5.7.1" in str(r), r
        assert c.wait_closed()
    with Client(gw.port) as c:
        c.send(v2())
        r = c.reply()
        assert r.code == 220
        assert c.reply().code == 554
    assert metrics(gw)['mxgate_proxy_errors_total{error="untrusted"}'] == 2
    # The trusted source must send it.
    msgid = session_through(gw, b"PROXY TCP4 192.0.2.99 198.51.100.1 40000 25\r\n", source="127.0.0.2")
    assert "([192.0.2.99])" in received_from(sink, msgid)
    with Client(gw.port, source="127.0.0.2") as c:
        c.send(b"EHLO client.test\r\n")
        assert c.wait_closed()
        assert bytes(c.buf) == b""


def test_per_ip_limit_counts_the_header_address(sink, gateway):
    gw = proxy_gateway(gateway, sink, max_connections_per_ip=1)
    a = Client(gw.port)
    a.send(b"PROXY TCP4 192.0.2.1 198.51.100.1 1000 25\r\n")
    assert a.greet().code == 220
    try:
        # Another client through the same balancer: its own address, admitted.
        with Client(gw.port) as b:
            b.send(b"PROXY TCP4 192.0.2.2 198.51.100.1 1000 25\r\n")
            assert b.greet().code == 220
        # The same client address again: over its limit.
        with Client(gw.port) as c:
            c.send(b"PROXY TCP4 192.0.2.1 198.51.100.1 1001 25\r\n")
            r = c.greet()
            assert r.code == 421, r
        assert gw.wait_log(r"event=refused .*client=192\.0\.2\.1 reason=max_connections_per_ip")
    finally:
        a.close()
