"""
The filter chain over the wire, apart from SPF (test_spf.py): the recipient
map (550 5.1.1 for unknown users), per-connection limits on messages and
recipients, the connection limits at connect, and a chain the gateway
refuses to start with.
"""
import subprocess

from mxtest import BINARY, Client, Closed, make_message, new_msgid, transact


def test_recipient_map(sink, gateway, tmp_path):
    m = tmp_path / "recipients"
    m.write_text("# valid mailboxes\nalice@example.com\nBob@Example.com\n@example.net\n")
    gw = gateway(downstream=sink.addr, recipient_map=str(m))
    mid = new_msgid("map")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@src.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("RCPT TO:<BOB@example.com>").code == 250
        r = c.cmd("RCPT TO:<mallory@example.com>")
        assert r.code == 550 and r.esc == "5.1.1", r
        assert c.cmd("RCPT TO:<anyone@example.net>").code == 250
        r = c.cmd("RCPT TO:<alice@elsewhere.test>")
        assert r.code == 550 and r.esc == "5.7.1", r    # relay first
        assert c.cmd("RCPT TO:<postmaster@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
    msg = sink.wait_message(mid)
    assert sorted(msg.rcpts) == ["BOB@example.com", "alice@example.com", "anyone@example.net",
                                 "postmaster@example.com"]


def test_recipient_map_pipelined(sink, gateway, tmp_path):
    """Refused recipients in a pipelined group are answered in their turn."""
    m = tmp_path / "recipients"
    m.write_text("alice@example.com\n")
    gw = gateway(downstream=sink.addr, recipient_map=str(m))
    mid = new_msgid("mappipe")
    with Client(gw.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\n"
               b"RCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
        codes = [(r.code, r.esc) for r in (c.reply(), c.reply(), c.reply(), c.reply(), c.reply())]
        assert codes == [(250, "2.1.0"), (550, "5.1.1"), (250, "2.1.5"), (550, "5.7.1"), (354, None)], codes
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
    assert sink.wait_message(mid).rcpts == ["alice@example.com"]


def test_messages_per_connection(sink, gateway):
    gw = gateway(downstream=sink.addr, max_messages_per_connection=2)
    with Client(gw.port) as c:
        c.ehlo()
        for i in range(2):
            assert transact(c, "s@src.test", ["u@example.com"], make_message(new_msgid("mpc"))).delivered
        r = c.cmd("MAIL FROM:<s@src.test>")
        assert r.code == 421 and r.esc == "4.7.0", r
        c.wait_closed()
    # a new connection may send again
    with Client(gw.port) as c:
        c.ehlo()
        assert transact(c, "s@src.test", ["u@example.com"], make_message(new_msgid("mpc"))).delivered


def test_recipients_per_connection(sink, gateway):
    gw = gateway(downstream=sink.addr, max_recipients_per_connection=3)
    with Client(gw.port) as c:
        c.ehlo()
        res = transact(c, "s@src.test", ["a@example.com", "b@example.com"], make_message(new_msgid("rpc")))
        assert res.delivered
        assert c.cmd("MAIL FROM:<s@src.test>").code == 250
        assert c.cmd("RCPT TO:<c@example.com>").code == 250
        r = c.cmd("RCPT TO:<d@example.com>")
        assert r.code == 452 and r.esc == "4.5.3", r
        assert c.cmd("DATA").code == 354
        c.send(make_message(new_msgid("rpc")) + b".\r\n")
        assert c.reply().code == 250


def test_per_ip_connection_limit(sink, gateway):
    gw = gateway(downstream=sink.addr, max_connections_per_ip=2, workers=1)
    a, b = Client(gw.port), Client(gw.port)
    try:
        assert a.greet().code == 220 and b.greet().code == 220
        with Client(gw.port) as c:
            r = c.greet()
            assert r.code == 421 and r.esc == "4.7.0", r
            c.wait_closed()
    finally:
        a.close()
        b.close()
    assert gw.wait_log("reason=max_connections_per_ip")


def test_bad_chains_refuse_to_start(tmp_path):
    for filters, why in (("spf", "open relay"), ("relay, dkim", "unknown filter: dkim")):
        p = subprocess.run([BINARY, "--filters", filters, "--listen", "127.0.0.1:1"], capture_output=True,
                           text=True, timeout=10)
        assert p.returncode == 2 and why in p.stderr, (filters, p.returncode, p.stderr)
    p = subprocess.run([BINARY, "--recipient-map", str(tmp_path / "missing"), "--listen", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "recipient_map" in p.stderr, p.stderr
