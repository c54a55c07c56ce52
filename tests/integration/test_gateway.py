"""
The gateway relaying to a recording sink: exact delivery, trace header,
pipelining, relay-through semantics, downstream failures, drain, no open relay.
Each test starts its own sink and its own mxgate.
"""
import email.utils
import re
import signal
import socket
import threading
import time

from mxtest import (Client, Closed, make_message, new_msgid, send_mail, split_received,
                    transact)

TRICKY_BODY = (
    b"First line.\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"a line that is only a dot is above; an empty line follows\r\n"
    b"\r\n"
    b"\r\n.\r\n"
    b"8-bit: caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac \xff\xfe raw octets\r\n"
    b"trailing spaces   \r\n"
    b"\ttab\r\n"
    b"last line\r\n"
)


def test_delivery_is_byte_exact_with_dots_and_8bit(sink, gateway):
    gw = gateway(downstream=sink.addr)
    msgid = new_msgid("exact")
    msg = make_message(msgid, body=TRICKY_BODY)
    with Client(gw.port) as c:
        ehlo = c.ehlo()
        assert "8BITMIME" in ehlo.text.upper()
        res = transact(c, "sender@src.test", ["user@example.com", "other@example.net"], msg,
                       mail_params="BODY=8BITMIME")
        assert res.delivered, res
        c.cmd("QUIT")
    m = sink.wait_message(msgid)
    assert m is not None, "message not at the sink"
    received, rest = split_received(m.data)
    assert received is not None, "no Received: header first: %r" % m.data[:200]
    assert rest == msg, "body changed in transit:\nsent %r\ngot  %r" % (msg, rest)
    assert m.mail_from == "sender@src.test"
    assert sorted(m.rcpts) == ["other@example.net", "user@example.com"]
    # 8-bit content must not be relayed as if it were 7-bit (RFC 6152).
    assert "BODY=8BITMIME" in m.mail_params.upper(), m.mail_params
    assert len(sink.find(msgid)) == 1


def test_received_header_prepended(sink, gateway):
    gw = gateway(downstream=sink.addr, hostname="mx.test")
    msgid = new_msgid("rcvd")
    msg = make_message(msgid, headers=["Received: from earlier.example by relay.example; "
                                       "Thu, 01 Jan 2026 00:00:00 +0000"])
    res = send_mail(gw.port, msg=msg, helo="helo-name.test")
    assert res.delivered, res
    m = sink.wait_message(msgid)
    assert m is not None
    received, rest = split_received(m.data)
    assert received is not None, m.data[:300]
    assert rest == msg, "the gateway must prepend, never reorder or drop headers"
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", received).decode("utf-8", "replace").strip()
    assert re.match(r"Received: from \S+", unfolded), unfolded
    assert "helo-name.test" in unfolded, unfolded
    assert "127.0.0.1" in unfolded, unfolded
    assert re.search(r"\bby mx\.test\b", unfolded), unfolded
    assert ";" in unfolded, "no date clause: " + unfolded
    date = unfolded.rsplit(";", 1)[1].strip()
    assert email.utils.parsedate_to_datetime(date) is not None, date


def test_transaction_is_logged(sink, gateway):
    gw = gateway(downstream=sink.addr)
    res = send_mail(gw.port, rcpts=["a@example.com", "b@example.com"], helo="logme.test")
    assert res.delivered, res
    line = gw.wait_log(r"event=tx\b.*\bresult=\"?250", timeout=5)
    assert line, "no event=tx line with result=250 in the log:\n" + gw.log_tail()
    assert "client=127.0.0.1" in line, line
    assert "sender@src.test" in line, line
    assert re.search(r"\brcpts=2\b", line), line
    assert "level=" in line, line


def test_pipelined_group_in_one_write(sink, gateway):
    gw = gateway(downstream=sink.addr)
    msgid = new_msgid("pipe")
    with Client(gw.port) as c:
        assert "PIPELINING" in c.ehlo().text.upper()
        c.send(b"MAIL FROM:<sender@src.test>\r\n"
               b"RCPT TO:<one@example.com>\r\n"
               b"RCPT TO:<stranger@elsewhere.test>\r\n"
               b"RCPT TO:<two@example.net>\r\n"
               b"DATA\r\n")
        replies = [c.reply() for _ in range(5)]
        assert [r.code for r in replies] == [250, 250, 550, 250, 354], replies
        assert replies[2].esc == "5.7.1", replies[2]
        c.send(make_message(msgid) + b".\r\nNOOP\r\n")
        end, noop = c.reply(), c.reply()
        assert end.code == 250, end
        assert noop.code == 250, noop
    m = sink.wait_message(msgid)
    assert m is not None
    assert sorted(m.rcpts) == ["one@example.com", "two@example.net"]
    # The sink offers PIPELINING: the client's group reached it in one write
    # (MAIL, both accepted RCPTs and DATA in a single read).
    together = [d for _, d in sink.reads
                if b"MAIL FROM:<sender@src.test>" in d and b"RCPT TO:<two@example.net>" in d and b"DATA\r\n" in d]
    assert together, [d[:200] for _, d in sink.reads]


def test_relay_through_waits_for_downstream_250(sink, gateway):
    sink.data_delay = 1.5
    gw = gateway(downstream=sink.addr)
    res = send_mail(gw.port)
    assert res.delivered, res
    assert res.elapsed >= 1.3, "250 came %.2f s after the dot, before the downstream's" % res.elapsed


def _sessions(port, n_sessions, per_session, token, timeout):
    """asyncio client: n parallel sessions, per_session messages each."""
    import asyncio

    acked, failed = [], []

    async def reply(r):
        lines = []
        for _ in range(100):
            line = await r.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode("utf-8", "replace").rstrip())
            if len(line) < 4 or line[3:4] == b" ":
                return int(lines[-1][:3]), lines
        raise ConnectionError("endless reply")

    async def session(i):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            code, lines = await reply(r)
            if code != 220:
                failed.append(("greeting", i, lines))
                return
            w.write(b"EHLO c%d.test\r\n" % i)
            await reply(r)
            for j in range(per_session):
                msgid = "<p%d.%d.%s@mxtest.invalid>" % (i, j, token)
                w.write(b"MAIL FROM:<s%d@src.test>\r\nRCPT TO:<u%d@example.com>\r\nDATA\r\n" % (i, j))
                codes = [(await reply(r))[0] for _ in range(3)]
                if codes != [250, 250, 354]:
                    failed.append(("envelope", msgid, codes))
                    w.write(b"RSET\r\n")
                    await reply(r)
                    continue
                w.write(make_message(msgid, body=b"session %d message %d\r\n" % (i, j)
                                     + b"x" * 200 + b"\r\n") + b".\r\n")
                code, lines = await reply(r)
                (acked if code == 250 else failed).append(msgid if code == 250 else ("eod", msgid, lines))
            w.write(b"QUIT\r\n")
            await reply(r)
        finally:
            w.close()

    async def main():
        tasks = [asyncio.ensure_future(session(i)) for i in range(n_sessions)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        errs = [t.exception() for t in done if t.exception() is not None]
        return len(pending), errs

    pending, errs = asyncio.run(main())
    return acked, failed, pending, errs


def test_500_parallel_sessions_5_messages_each_delivered_once(sink, gateway):
    n, k = 500, 5
    gw = gateway(downstream=sink.addr, max_connections=2000, max_connections_per_ip=2000,
                 downstream_queue_limit=5000, downstream_queue_timeout=100,
                 downstream_timeout=60, command_timeout=120, data_timeout=120)
    token = new_msgid("x")[3:19]
    t0 = time.monotonic()
    acked, failed, pending, errs = _sessions(gw.port, n, k, token, timeout=120)
    took = time.monotonic() - t0
    assert pending == 0, "%d sessions still running after 120 s" % pending
    assert not errs, errs[:5]
    assert not failed, "%d refused, first: %r" % (len(failed), failed[:5])
    assert len(acked) == n * k
    assert sink.wait_for(lambda s: len(s.messages) >= n * k, timeout=10)
    ids = sink.accepted_ids()
    want = {"<p%d.%d.%s@mxtest.invalid>" % (i, j, token) for i in range(n) for j in range(k)}
    counts = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    dups = [i for i, c in counts.items() if c > 1]
    assert not dups, "delivered more than once: %r" % dups[:5]
    assert set(counts) == want, "missing %d, unexpected %d" % (len(want - set(counts)),
                                                              len(set(counts) - want))
    print("500x5 messages through mxgate in %.1f s" % took)


def test_downstream_down_451_and_no_acked_message_lost(sink, gateway):
    gw = gateway(downstream=sink.addr, downstream_timeout=3)
    results = []          # (msgid, Result, sent after the sink was gone)
    stopped = threading.Event()
    deadline = time.monotonic() + 30

    def sender():
        after = 0
        for i in range(400):
            if time.monotonic() > deadline or after >= 5:
                return
            late = stopped.is_set()
            msgid = new_msgid("down%d" % i)
            r = send_mail(gw.port, msg=make_message(msgid), timeout=10)
            results.append((msgid, r, late))
            after += late

    t = threading.Thread(target=sender)
    t.start()
    assert sink.wait_for(lambda s: len(s.messages) >= 5, timeout=15), "nothing delivered before the stop"
    sink.stop()           # mid-stream: some transactions are in flight
    stopped.set()
    t.join(60)
    assert not t.is_alive()
    acked = [mid for mid, r, _ in results if r.delivered]
    assert acked, results[:3]
    have = set(sink.accepted_ids())
    lost = [mid for mid in acked if mid not in have]
    assert not lost, "acknowledged with 250 but not at the sink: %r" % lost
    for mid, r, _ in results:
        assert r.delivered or (r.final is not None and 400 <= r.final.code < 500), r
    # With the downstream gone every transaction is refused 451 4.4.1 (at
    # whatever stage the gateway finds out); none is acknowledged.
    after = [r for _, r, late in results if late]
    assert len(after) >= 5, results[-3:]
    for r in after:
        assert r.final is not None and r.final.code == 451 and r.final.esc == "4.4.1", r


def test_downstream_unreachable_from_start(gateway):
    from mxtest import free_port
    gw = gateway(downstream="127.0.0.1:%d" % free_port(), downstream_timeout=3)
    r = send_mail(gw.port)
    assert not r.delivered
    assert r.final is not None and r.final.code == 451 and r.final.esc == "4.4.1", r


def test_downstream_restart_pool_recovers(sink, gateway):
    gw = gateway(downstream=sink.addr, downstream_timeout=3)
    assert send_mail(gw.port).delivered
    sink.stop()
    for _ in range(3):
        r = send_mail(gw.port)
        assert r.final is not None and r.final.code == 451 and r.final.esc == "4.4.1", r
    sink.start()
    t_restart = time.monotonic()
    # Each worker's pool may back off after failed connects (a few seconds at
    # most); after that every message must go through again.
    streak, streak_start, ids = 0, None, []
    for _ in range(2000):
        mid = new_msgid("after")
        r = send_mail(gw.port, msg=make_message(mid))
        if r.delivered:
            if streak == 0:
                streak_start = time.monotonic()
            streak += 1
            ids.append(mid)
            if streak >= 20:
                break
        else:
            assert r.final is not None and r.final.code == 451, r
            streak = 0
            time.sleep(0.05)
        assert time.monotonic() - t_restart < 15, "no steady delivery within 15 s of the restart: %r" % r
    assert streak >= 20
    assert streak_start - t_restart < 8, "pool took %.1f s to recover" % (streak_start - t_restart)
    have = set(sink.accepted_ids())
    assert all(mid in have for mid in ids), "a 250-acknowledged message is not at the sink"


def test_downstream_timeout_451(sink, gateway):
    sink.data_delay = 8
    gw = gateway(downstream=sink.addr, downstream_timeout=2)
    t0 = time.monotonic()
    r = send_mail(gw.port, timeout=15)
    took = time.monotonic() - t0
    assert r.final is not None and r.final.code == 451 and r.final.esc == "4.4.1", r
    assert took < 7, "451 after %.1f s, downstream_timeout is 2 s" % took
    sink.data_delay = 0
    deadline = time.monotonic() + 10
    while not send_mail(gw.port).delivered:
        assert time.monotonic() < deadline, "no delivery after the slow downstream recovered"
        time.sleep(0.2)


def test_downstream_drops_mid_transfer(sink, gateway):
    sink.drop_after_data_bytes = 2000
    gw = gateway(downstream=sink.addr, downstream_timeout=3)
    mid = new_msgid("drop")
    r = send_mail(gw.port, msg=make_message(mid, body=b"y" * 100 + b"\r\n" * 1 + (b"z" * 78 + b"\r\n") * 400))
    assert r.final is not None and 400 <= r.final.code < 500, r
    assert not sink.find(mid, accepted_only=False)
    sink.drop_after_data_bytes = None
    deadline = time.monotonic() + 10
    while not send_mail(gw.port).delivered:
        assert time.monotonic() < deadline, "no delivery after the dropped connection"
        time.sleep(0.2)


def _abort_mid_data(port, msgid, reset):
    c = Client(port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
    assert c.cmd("RCPT TO:<user@example.com>").code == 250
    assert c.cmd("DATA").code == 354
    full = make_message(msgid, body=(b"q" * 70 + b"\r\n") * 300)
    c.send(full[: len(full) // 2])
    time.sleep(0.3)
    if reset:
        import struct
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def test_client_disconnect_mid_data_forwards_nothing(sink, gateway):
    gw = gateway(downstream=sink.addr)
    ids = [new_msgid("abort-fin"), new_msgid("abort-rst")]
    _abort_mid_data(gw.port, ids[0], reset=False)
    _abort_mid_data(gw.port, ids[1], reset=True)
    time.sleep(1.5)
    for mid in ids:
        assert not sink.find(mid, accepted_only=False), "a message cut short was forwarded"
    # The downstream connection that carried the aborted body must not be
    # reused as if nothing happened: the next message arrives intact.
    mid = new_msgid("next")
    msg = make_message(mid)
    r = send_mail(gw.port, msg=msg)
    assert r.delivered, r
    m = sink.wait_message(mid)
    assert m is not None and split_received(m.data)[1] == msg
    assert not sink.find(ids[0], accepted_only=False) and not sink.find(ids[1], accepted_only=False)


def test_sigterm_drains_a_slow_transaction(sink, gateway):
    sink.data_delay = 2.0
    gw = gateway(downstream=sink.addr, drain_timeout=10, downstream_timeout=10)
    idle = Client(gw.port)
    idle.ehlo()
    c = Client(gw.port, timeout=20)
    c.ehlo()
    mid = new_msgid("drain")
    assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
    assert c.cmd("RCPT TO:<user@example.com>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(make_message(mid) + b".\r\n")
    assert sink.wait_for(lambda s: s.eod_arrived >= 1, timeout=5), "body never reached the sink"
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    # New connections are no longer greeted with 220.
    time.sleep(0.3)
    try:
        with Client(gw.port, timeout=1) as late:
            g = late.greet()
            assert g.code != 220, "accepted a new session while draining: %r" % g
    except (OSError, Closed):
        pass
    r = c.reply(timeout=15)
    assert r.code == 250, "in-flight transaction lost in the drain: %r" % r
    assert sink.find(mid)
    # The idle session is told 421 and closed.
    rest = idle.rest_replies(timeout=15)
    assert any(x.code == 421 for x in rest), rest
    rc = gw.wait(10 + 5)
    assert rc == 0, "exit code %r after the drain" % rc
    assert time.monotonic() - t0 < 15
    c.close()
    idle.close()


def test_open_relay_refused(sink, gateway):
    gw = gateway(downstream=sink.addr, relay_domains="example.com,example.net")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        for rcpt in ("victim@elsewhere.test", "victim@example.com.elsewhere.test",
                     "victim@notexample.com", "victim@example.org"):
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            assert r.code == 550 and r.esc == "5.7.1", (rcpt, r)
        r = c.cmd("RCPT TO:<@example.com:victim@elsewhere.test>")
        assert r.code >= 500, ("source route to an outside domain", r)
        r = c.cmd("DATA")
        assert r.code >= 500, r
        assert c.cmd("RSET").code == 250
        # Domains are case-insensitive.
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        r = c.cmd("RCPT TO:<User@EXAMPLE.COM>")
        assert r.code == 250, r
    time.sleep(0.3)
    assert not any("elsewhere" in " ".join(m.rcpts) for m in sink.all)


def test_downstream_550_at_rcpt_passed_back(sink, gateway):
    sink.rcpt_replies["nouser@example.com"] = "550 5.1.1 <nouser@example.com>: no such user here"
    gw = gateway(downstream=sink.addr)
    mid = new_msgid("rcpt550")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        bad = c.cmd("RCPT TO:<nouser@example.com>")
        good = c.cmd("RCPT TO:<user@example.com>")
        assert bad.code == 550 and bad.esc == "5.1.1", bad
        assert "no such user here" in bad.text, bad
        assert good.code == 250, good
        assert c.cmd("DATA").code == 354
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
    m = sink.wait_message(mid)
    assert m is not None and m.rcpts == ["user@example.com"]


def test_downstream_4xx_at_rcpt_passed_back(sink, gateway):
    sink.rcpt_replies["full@example.com"] = "452 4.2.2 <full@example.com>: mailbox full, later"
    gw = gateway(downstream=sink.addr)
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@src.test>").code == 250
        r = c.cmd("RCPT TO:<full@example.com>")
        assert r.code == 452 and r.esc == "4.2.2" and "mailbox full, later" in r.text, r


def test_downstream_5xx_at_end_of_data_passed_back(sink, gateway):
    sink.data_reply = "554 5.6.0 content refused by downstream policy"
    gw = gateway(downstream=sink.addr)
    r = send_mail(gw.port)
    assert r.stage == "eod" and r.final.code == 554 and r.final.esc == "5.6.0", r
    assert "content refused by downstream policy" in r.final.text
    sink.data_reply = "451 4.3.0 downstream busy, try again"
    r = send_mail(gw.port)
    assert r.stage == "eod" and r.final.code == 451 and r.final.esc == "4.3.0", r
    assert "downstream busy, try again" in r.final.text
    sink.data_reply = None
    assert send_mail(gw.port).delivered


def test_session_goes_on_after_downstream_refusal(sink, gateway):
    refused = new_msgid("refuse")
    sink.data_reply = lambda m: "550 5.7.0 no thanks" if m.message_id == refused else None
    gw = gateway(downstream=sink.addr)
    with Client(gw.port) as c:
        c.ehlo()
        r1 = transact(c, "sender@src.test", ["user@example.com"], make_message(refused))
        assert r1.final.code == 550, r1
        ok = new_msgid("ok")
        r2 = transact(c, "sender@src.test", ["user@example.com"], make_message(ok))
        assert r2.delivered, r2
    assert sink.find(ok) and not sink.find(refused)


def test_lmtp_downstream(make_sink, gateway):
    lmtp = make_sink(lmtp=True)
    gw = gateway(downstream=lmtp.addr, downstream_protocol="lmtp")
    mid = new_msgid("lmtp")
    msg = make_message(mid, body=b".dot\r\nbody\r\n")
    r = send_mail(gw.port, rcpts=["a@example.com", "b@example.com"], msg=msg)
    assert r.delivered, r
    m = lmtp.wait_message(mid)
    assert m is not None and sorted(m.rcpts) == ["a@example.com", "b@example.com"]
    assert split_received(m.data)[1] == msg
    assert any(line.upper().startswith("LHLO") for _, line in lmtp.commands)


def test_large_message_to_slow_downstream_backpressure(sink, gateway):
    """A 3 MiB message to a downstream that reads slowly: mxgate stops
    reading from the client instead of buffering (or dropping it), and the
    message arrives whole."""
    sink.read_delay = 0.002
    gw = gateway(downstream=sink.addr, message_size_limit=8 * 1024 * 1024)
    msgid = new_msgid("big")
    line = b"x" * 98 + b"\r\n"
    body = line * (3 * 1024 * 1024 // len(line))
    res = send_mail(gw.port, msg=make_message(msgid, body=body), timeout=60)
    assert res.delivered, res
    m = sink.wait_message(msgid, timeout=30)
    assert m is not None
    assert body in m.data
