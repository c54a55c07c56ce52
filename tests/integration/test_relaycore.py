"""
The relay core: reply stream integrity, a downstream that dies or stalls,
the envelope forwarded byte for byte, the transaction log, slow clients,
and not blaming the client for the downstream.

Replies named here: downstream failure is `451 4.4.1`, a timeout `421 4.4.2`
and a close. Times are the contract's; SLACK is what a loaded 2-core machine
adds between the event and this process seeing it.
"""
import re
import signal
import socket
import threading
import time

import pytest

import logfmt
from mxtest import (Client, Closed, Gateway, free_port, make_message, new_msgid, send_mail,
                    split_received, transact)

SLACK = 0.3
GROUP = "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"


# ---------------------------------------------------------------- helpers


def tok():
    return new_msgid("t")[3:15]


def codes(replies):
    return [(r.code, r.esc) if hasattr(r, "code") else r for r in replies]


def code_list(replies):
    return [r.code if hasattr(r, "code") else r for r in replies]


def collect(c, n, deadline):
    """Up to n replies, each by the deadline (monotonic); a string marks
    where it stopped (timeout or close) and ends the list."""
    out = []
    for _ in range(n):
        try:
            out.append(c.reply(timeout=max(0.01, deadline - time.monotonic())))
        except socket.timeout:
            out.append("no reply by the deadline (+%.1f s)" % (time.monotonic() - deadline))
            break
        except Closed as e:
            out.append("closed: %s" % e)
            break
    return out


def deliver_on_session(c, sink, tag, window=6.0, attempts=30):
    """A pipelined transaction on an open session, retried while the gateway
    answers 4xx (the pool reconnecting), bounded in attempts and time.
    Returns (msgid or None, history of reply codes)."""
    history = []
    deadline = time.monotonic() + window
    for _ in range(attempts):
        mid = new_msgid(tag)
        # A transaction whose MAIL was accepted before the failure is still
        # open: a client resets it before the next MAIL (RFC 5321 4.1.1.5).
        r = c.cmd("RSET", timeout=5)
        assert r.code == 250, r
        c.send(GROUP % ("%s@src.test" % tag, "user@example.com"))
        rs = collect(c, 3, time.monotonic() + 15)
        history.append(codes(rs))
        if any(isinstance(r, str) for r in rs):
            return None, history
        if rs[2].code == 354:
            c.send(make_message(mid) + b".\r\n")
            end = collect(c, 1, time.monotonic() + 15)
            history.append(codes(end))
            if isinstance(end[0], str):
                return None, history
            if end[0].code == 250 and [r.code for r in rs] == [250, 250, 354]:
                assert sink.wait_message(mid, timeout=5) is not None, "250 but not at the sink"
                return mid, history
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return None, history


def start_body(c, sender="sender@src.test"):
    """MAIL, RCPT and DATA in one group, all three accepted: the client is
    in the body."""
    c.send(GROUP % (sender, "user@example.com"))
    rs = collect(c, 3, time.monotonic() + 5)
    assert code_list(rs) == [250, 250, 354], rs


def assert_session_recovers(c, sink, tag):
    """The downstream behaves again (its faults cleared by the caller): the
    same session still works, and delivers."""
    assert c.cmd("NOOP", timeout=3).code == 250
    mid, hist = deliver_on_session(c, sink, tag)
    assert mid, "the session could not deliver once the downstream behaved: %r" % hist


def tx_line_session(gw, needle, timeout=5.0):
    """The session id on the first event=tx log line that contains needle
    (read loosely: a regex, so that tests outside the log section do not
    depend on the log format's fine points)."""
    line = gw.wait_log(r"event=tx\b.*" + re.escape(needle), timeout=timeout)
    if not line:
        return None
    m = re.search(r'\bsession=("?)([^" ]+)\1', line)
    return m.group(2) if m else None


def disconnect_lines(gw):
    return [l for l in gw.log().splitlines() if re.search(r"\bevent=disconnect\b", l)]


def wait_tx(gw, pred, timeout=5.0):
    return gw.wait_record(lambda r: r.get("event") == "tx" and pred(r), timeout=timeout, strict=False)


# ================================================================ 1. reply stream integrity


def test_unterminated_tail_holds_no_reply_back(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1)
    with Client(gw.port) as c:
        assert c.greet().code == 220
        c.send(b"NOOP\r\n" * 40 + b"QQQQQQQQQQQQQQ")
        template = c.raw_reply(timeout=3)
        assert re.fullmatch(rb"250 [^\r\n]*\r\n", template), (
            "the first NOOP reply is %r (the client's own bytes in the reply stream?)" % template)
        rest = c.recv_raw(39 * len(template), timeout=3)
        got = template + rest
        assert got == template * 40, (
            "40 NOOPs sent in one write with an unterminated tail: got %d of 40 replies (%d bytes, "
            "last %r)" % (got.count(template), len(got), got[-60:]))
        extra = c.recv_quiet(1.0)
        assert extra == b"", "bytes sent for a command that was never finished: %r" % extra
        c.send(b"\r\n")
        r = c.reply(timeout=3)
        assert 500 <= r.code < 600, "QQQQQQQQQQQQQQ is no command: %r" % r
        c.send(b"NOOP\r\n")
        assert c.raw_reply(timeout=3) == template
        assert c.recv_quiet(0.3) == b""


def test_reply_streams_stay_apart_across_sessions(sink, gateway):
    """8 sessions on one worker send 40 NOOPs and an unterminated RCPT line
    carrying a secret, round after round, while two others do real
    transactions: each stream holds exactly its own replies."""
    # Each NOOP session holds a transaction (and so a downstream connection)
    # open throughout: room for them and the two transaction clients.
    gw = gateway(downstream=sink.addr, workers=1, downstream_connections=16)
    n_clients, rounds = 8, 40
    stop = threading.Event()
    failures = []
    received = {}
    flock = threading.Lock()

    def fail(msg):
        with flock:
            failures.append(msg)
        stop.set()

    def secret(i, r):
        return b"secret-%d-%d" % (i, r)

    def noop_client(i):
        allbytes = bytearray()
        try:
            with Client(gw.port, timeout=10) as c:
                c.ehlo("noop%d.test" % i)
                c.send(b"NOOP\r\n")
                template = c.raw_reply(timeout=5)
                if not re.match(rb"250 [^\r\n]*\r\n\Z", template):
                    return fail("client %d: NOOP reply %r" % (i, template))
                r = c.cmd("MAIL FROM:<noop%d@src.test>" % i)
                if r.code != 250:
                    return fail("client %d: MAIL %r" % (i, r))
                for rnd in range(rounds):
                    if stop.is_set():
                        return
                    c.send(b"NOOP\r\n" * 40 + b"RCPT TO:<" + secret(i, rnd) + b"@example.com>")
                    got = c.recv_raw(40 * len(template), timeout=5)
                    allbytes += got
                    if got != template * 40:
                        leaked = sorted(set(re.findall(rb"secret-\d+-\d+", got)))
                        return fail("client %d round %d: expected exactly 40 x %r, got %d bytes "
                                    "(%d whole NOOP replies; secrets in them: %r): %r ... %r"
                                    % (i, rnd, template, len(got), got.count(template), leaked,
                                       got[:80], got[-40:]))
                    early = c.recv_quiet(0.05)
                    allbytes += early
                    if early:
                        return fail("client %d round %d: bytes before its RCPT line was finished: %r"
                                    % (i, rnd, early[:200]))
                    c.send(b"\r\n")
                    rr = c.raw_reply(timeout=10)
                    allbytes += rr
                    if not re.match(rb"250 [^\r\n]*\r\n\Z", rr):
                        return fail("client %d round %d: RCPT reply %r" % (i, rnd, rr))
                c.send(b"RSET\r\n")
                rr = c.raw_reply(timeout=10)
                allbytes += rr
                if not rr.startswith(b"250 "):
                    return fail("client %d: RSET %r" % (i, rr))
                c.send(b"QUIT\r\n")
                rr = c.raw_reply(timeout=10)
                allbytes += rr
                if not rr.startswith(b"221 "):
                    return fail("client %d: QUIT %r" % (i, rr))
                allbytes += c.recv_quiet(0.3)
        except (OSError, Closed, AssertionError) as e:
            fail("client %d: %r" % (i, e))
        finally:
            with flock:
                received[i] = bytes(allbytes)

    delivered = []

    def tx_client(k):
        try:
            with Client(gw.port, timeout=15) as c:
                c.ehlo("tx%d.test" % k)
                for j in range(200):
                    if stop.is_set():
                        break
                    mid = new_msgid("mix%d-%d" % (k, j))
                    res = transact(c, "tx%d@src.test" % k, ["user%d@example.com" % k], make_message(mid))
                    if not res.delivered:
                        return fail("transaction client %d message %d: %r" % (k, j, res))
                    for r in [res.final] + res.rcpt:
                        if b"secret-" in str(r).encode():
                            return fail("transaction client %d saw a secret: %r" % (k, r))
                    with flock:
                        delivered.append(mid)
        except (OSError, Closed, AssertionError) as e:
            fail("transaction client %d: %r" % (k, e))

    noops = [threading.Thread(target=noop_client, args=(i,), daemon=True) for i in range(n_clients)]
    txs = [threading.Thread(target=tx_client, args=(k,), daemon=True) for k in range(2)]
    for t in noops + txs:
        t.start()
    deadline = time.monotonic() + 25
    for t in noops:
        t.join(max(0.1, deadline - time.monotonic()))
    stop.set()
    for t in txs:
        t.join(max(0.1, deadline + 5 - time.monotonic()))
    assert not any(t.is_alive() for t in noops + txs), "clients still running after 25 s"
    assert not failures, "\n".join(failures[:8])
    for i, data in received.items():
        for j in range(n_clients):
            if j != i:
                assert b"secret-%d-" % j not in data, (
                    "client %d received client %d's input: %r" % (i, j, data[:300]))
    assert delivered, "the transaction clients delivered nothing"
    for mid in delivered:
        assert sink.find(mid), "acknowledged but not at the sink: %s" % mid


# ================================================================ 2. a downstream that dies


CLOSE_CASES = {
    # verb the sink dies on: expected (code, esc) for MAIL, RCPT, DATA
    "MAIL": [(451, "4.4.1"), (451, "4.4.1"), (451, "4.4.1")],
    "RCPT": [(250, None), (451, "4.4.1"), (451, "4.4.1")],
    "DATA": [(250, None), (250, None), (451, "4.4.1")],
}


def _check(replies, want):
    got = [(r.code, r.esc if w[1] else None) if hasattr(r, "code") else r
           for r, w in zip(replies, want)]
    return got == want, got


@pytest.mark.parametrize("verb", ["MAIL", "RCPT", "DATA"])
def test_downstream_close_answers_every_outstanding_command(sink, gateway, verb):
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=10)
    with Client(gw.port, timeout=15) as c:
        c.ehlo()
        sink.fail_at = {verb: "close"}
        c.send(GROUP % ("sender@src.test", "user@example.com"))
        assert sink.wait_for(lambda s: s.failed_at, timeout=5), "the group never reached the sink"
        t_close = sink.failed_at[0][0]
        replies = collect(c, 3, t_close + 1.0 + SLACK)
        ok, got = _check(replies, CLOSE_CASES[verb])
        assert ok, ("downstream closed on %s: want %r within 1 s, got %r (%r)"
                    % (verb, CLOSE_CASES[verb], got, replies))
        sink.fail_at = {}
        assert_session_recovers(c, sink, "after-%s" % verb.lower())


def _big_body():
    return make_message(new_msgid("big"), body=(b"z" * 98 + b"\r\n") * (5 * 1024 * 1024 // 100))


def test_downstream_close_mid_body_answers_the_dot(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=3, drain_timeout=5)
    sink.drop_after_data_bytes = 550 * 1000
    with Client(gw.port, timeout=15) as c:
        c.ehlo()
        start_body(c)
        c.sock.settimeout(8)
        try:
            c.sock.sendall(_big_body() + b".\r\n")
        except socket.timeout:
            pytest.fail("the gateway stopped reading a 5 MiB body after its downstream died")
        t_sent = time.monotonic()
        assert sink.wait_for(lambda s: s.failed_at, timeout=5), "the sink never dropped the body"
        # Buffers may let the client finish before the sink has read 550 KB:
        # the clock starts at whichever came last, the dot or the close.
        t0 = max(t_sent, sink.failed_at[0][0])
        end = collect(c, 1, t0 + 1.0 + SLACK)
        assert codes(end) == [(451, "4.4.1")], (
            "downstream died mid-body: the final dot wants 451 4.4.1 within 1 s, got %r" % end)
        sink.drop_after_data_bytes = None
        assert_session_recovers(c, sink, "after-body")

    # Again, with SIGTERM as soon as the downstream is gone: the client
    # finishes its body, gets 451 4.4.1 for it, and mxgate exits 0 in time.
    sink.drop_after_data_bytes = 550 * 1000
    with Client(gw.port, timeout=15) as c:
        c.ehlo()
        start_body(c)
        body = _big_body() + b".\r\n"
        c.sock.settimeout(8)
        c.sock.sendall(body[:1024 * 1024])
        assert sink.wait_for(lambda s: len(s.failed_at) >= 2, timeout=5), "the sink never dropped the body"
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        try:
            c.sock.sendall(body[1024 * 1024:])
        except OSError as e:
            pytest.fail("the gateway stopped reading the body while draining: %r" % e)
        _after_sigterm(gw, c, t0, gw.drain_timeout, [(451, "4.4.1")], "body drop")


def test_silent_downstream_times_out_every_outstanding_command(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=3)
    with Client(gw.port, timeout=15) as c:
        c.ehlo()
        sink.fail_at = {"MAIL": "silent"}
        c.send(GROUP % ("sender@src.test", "user@example.com"))
        assert sink.wait_for(lambda s: s.failed_at, timeout=5)
        t_silent = sink.failed_at[0][0]
        replies = collect(c, 3, t_silent + 3 + 1.0 + SLACK)
        assert codes(replies) == [(451, "4.4.1")] * 3, (
            "silent downstream, downstream_timeout=3: want 3 x 451 4.4.1 within 4 s, got %r" % replies)
        sink.fail_at = {}
        assert_session_recovers(c, sink, "after-silent")


def test_client_hangup_after_downstream_died_mid_body_is_noticed(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=10)
    t = tok()
    c = Client(gw.port, timeout=15)
    try:
        c.ehlo()
        res = transact(c, "first-%s@src.test" % t, ["user@example.com"], make_message())
        assert res.delivered, res
        session = tx_line_session(gw, "first-%s@src.test" % t)
        assert session, "no tx line for the first message:\n" + gw.log_tail()
        # A downstream that reads slowly (so the body backs up in mxgate),
        # then dies 550 KB in; the client has sent more than that.
        sink.read_delay = 0.05
        sink.drop_after_data_bytes = 550 * 1000
        start_body(c, "second@src.test")
        c.sock.settimeout(1.0)
        try:
            c.sock.sendall(_big_body())
        except socket.timeout:
            pass                      # what the gateway and the kernel took is enough
        assert sink.wait_for(lambda s: s.failed_at, timeout=10), "the sink never dropped the body"
        time.sleep(0.2)
    finally:
        c.close()
    t_hangup = time.monotonic()
    line = gw.wait_log(r"\bevent=disconnect\b.*\bsession=\"?%s\b" % re.escape(session),
                       timeout=1.0 + SLACK)
    assert line, ("the client hung up %.1f s ago mid-body (its downstream gone) and the gateway "
                  "has not noticed (no event=disconnect for session %s):\n%s"
                  % (time.monotonic() - t_hangup, session, gw.log_tail(8)))


SIGTERM_CASES = ["MAIL-close", "RCPT-close", "DATA-close", "MAIL-silent"]   # body: in the mid-body test


@pytest.mark.parametrize("case", SIGTERM_CASES)
def test_sigterm_while_the_downstream_failed(sink, gateway, case):
    """SIGTERM while a client waits on a dead or silent downstream: the owed
    replies come (451 4.4.1; the silent one's at downstream_timeout, before
    drain_timeout), then at most a 421 and the close, and mxgate exits 0
    within drain_timeout + 1 s."""
    drain = 5
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=3, drain_timeout=drain)
    c = Client(gw.port, timeout=15)
    try:
        c.ehlo()
        verb, _, mode = case.partition("-")
        sink.fail_at = {verb: mode}
        c.send(GROUP % ("sender@src.test", "user@example.com"))
        assert sink.wait_for(lambda s: s.failed_at, timeout=5)
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        want = CLOSE_CASES[verb] if mode == "close" else [(451, "4.4.1")] * 3
        _after_sigterm(gw, c, t0, drain, want, case)
    finally:
        c.close()


def _after_sigterm(gw, c, t0, drain, want, case):
    """The owed replies, then at most a 421 and the close; exit code 0
    within drain_timeout + 1 s of the SIGTERM (sent at t0)."""
    replies = collect(c, len(want) + 1, t0 + drain + 1)
    ok, got = _check(replies, want)
    assert ok, "%s then SIGTERM: want %r, got %r" % (case, want, replies)
    tail = replies[len(want):]
    assert not tail or isinstance(tail[0], str) or tail[0].code == 421, tail
    rc = gw.wait(max(0.1, t0 + drain + 1 - time.monotonic()))
    took = time.monotonic() - t0
    assert rc == 0, "%s: exit code %r %.1f s after SIGTERM (drain_timeout %d)" % (case, rc, took, drain)
    assert c.wait_closed(1.0), "the client's connection outlived the gateway"


# ================================================================ 3. the envelope as given


SENDERS = ['"a>b"@sender.test', r'"a\"b"@sender.test', r'"a\\b"@sender.test', '"a b"@sender.test',
           '"x@y"@sender.test', r'"q\"r >s@t\\"@sender.test']
RECIPIENTS = ['"c>d"@example.com', r'"c\"d"@example.com', r'"c\\d"@example.com', '"c d"@example.com',
              '"u@v"@example.com', r'"w >x@\"y"@example.com']


def test_envelope_forwarded_byte_for_byte(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1)
    cases = [(s, r, "") for s, r in zip(SENDERS, RECIPIENTS)]
    cases.append(('"p q>"@sender.test', '"r s>"@example.com', "BODY=8BITMIME"))
    bad = []
    with Client(gw.port) as c:
        c.ehlo()
        for sender, rcpt, params in cases:
            mid = new_msgid("env")
            n0 = len(sink.commands)
            res = transact(c, sender, [rcpt], make_message(mid), mail_params=params)
            if not res.delivered:
                bad.append("MAIL FROM:<%s> RCPT TO:<%s>: not delivered: %r" % (sender, rcpt, res))
                if res.stage in ("mail", "rcpt", "data"):
                    c.cmd("RSET")
                continue
            m = sink.wait_message(mid)
            lines = [l for _, l in sink.commands[n0:]]
            mails = [l for l in lines if l.upper().startswith("MAIL ")]
            rcpts = [l for l in lines if l.upper().startswith("RCPT ")]
            want_mail = "MAIL FROM:<%s>" % sender
            if not (len(mails) == 1 and (mails[0] == want_mail or
                                         (params and mails[0].startswith(want_mail + " ")))):
                bad.append("downstream got %r for MAIL FROM:<%s>%s" % (mails, sender,
                                                                      " " + params if params else ""))
            if rcpts != ["RCPT TO:<%s>" % rcpt]:
                bad.append("downstream got %r for RCPT TO:<%s>" % (rcpts, rcpt))
            if m is None or m.mail_from != sender or m.rcpts != [rcpt]:
                bad.append("sink recorded %r for %s -> %s" % (m, sender, rcpt))
    assert not bad, "\n".join(bad)


# ================================================================ 4. the log

TX_KEYS = {"session", "tx", "client", "port", "helo", "from", "size", "end", "duration_ms"}
DISCONNECT_KEYS = {"session", "client", "reason"}


def test_log_is_strict_logfmt(make_sink, gateway):
    # The parser itself, first.
    assert logfmt.parse('a=1 b="x \\"y\\" \\\\ \\n\\x01" c= d=""') == {
        "a": "1", "b": 'x "y" \\ \n\x01', "c": "", "d": ""}
    for bad in ("a=1  b=2", "a=1 a=2", 'a=x"y', "a", "a=1 ", 'a="\\q"', "k!=1", 'a="x', "a=\x01",
                "a=caf\u00e9", " a=1"):
        with pytest.raises(logfmt.LogfmtError):
            logfmt.parse(bad)
    assert logfmt.encode('x" y') == '"x\\" y"' and logfmt.encode("a=b") == '"a=b"'
    assert logfmt.encode("caf\u00e9") == '"caf\\xc3\\xa9"' and logfmt.encode("ok@x.test") == "ok@x.test"

    sink = make_sink(smtputf8=True)
    gw = gateway(downstream=sink.addr, workers=1)
    t = tok()
    with Client(gw.port) as c:
        c.ehlo("helo-%s.test" % t)
        res = transact(c, "plain-%s@src.test" % t, ["a@example.com", "b@elsewhere.test", "c@example.net"],
                       make_message())
        assert res.delivered, res
        res = transact(c, '"sp ace\\"q=1"@src.test', ["d@example.com"], make_message())
        assert res.delivered, res
        res = transact(c, "us\u00e9r-%s@src.test" % t, ["e@example.com"], make_message(),
                       mail_params="SMTPUTF8")
        assert res.delivered, res
        assert c.cmd("MAIL FROM:<x@src.test>").code == 250
        assert c.cmd("RCPT TO:<nobody@elsewhere.test>").code == 550
        assert c.cmd("RSET").code == 250
        c.cmd("QUIT")
    with Client(gw.port) as c:
        assert c.greet().code == 220
        if c.cmd('EHLO odd=name"here\\').code == 250:
            assert c.cmd("MAIL FROM:<y@src.test>").code == 250
    assert gw.wait_log(r"event=disconnect.*reason=\"?client_closed", timeout=5)
    assert gw.stop() == 0
    lines = [l for l in gw.log().splitlines() if l]
    assert lines
    errors, loose, recs = [], [], []
    for l in lines:
        try:
            logfmt.parse(l)
        except logfmt.LogfmtError as e:
            errors.append(str(e))
            continue
        try:
            recs.append(logfmt.parse(l, canonical=True))
        except logfmt.LogfmtError as e:
            loose.append(str(e))
    assert not errors, "%d of %d log lines are not logfmt:\n%s" % (len(errors), len(lines),
                                                                  "\n".join(errors[:10]))
    assert not loose, "%d of %d log lines quote or escape a value other than the logfmt way:\n%s" % (
        len(loose), len(lines), "\n".join(loose[:10]))
    txs = [r for r in recs if r.get("event") == "tx"]
    assert len(txs) >= 5, txs
    for r in txs:
        missing = TX_KEYS - set(r)
        assert not missing, "tx line without %s: %r" % (sorted(missing), r)
        ns = sorted(int(k.split(".")[1]) for k in r if re.fullmatch(r"rcpt\.[0-9]+", k))
        assert ns == list(range(1, len(ns) + 1)), "rcpt.N not numbered from 1: %r" % r
        assert all("rcpt.%d.reply" % n in r for n in ns), "a recipient without its reply: %r" % r
    assert any("rcpt.3" in r and r["rcpt.2.reply"].startswith("550 5.7.1") for r in txs), txs
    discs = [r for r in recs if r.get("event") == "disconnect"]
    assert len(discs) >= 3, discs
    for r in discs:
        missing = DISCONNECT_KEYS - set(r)
        assert not missing, "disconnect line without %s: %r" % (sorted(missing), r)


def test_log_refused_recipients_are_in_their_transaction(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1)
    t = tok()
    s_ok, s_rset, s_quit = ("%s-%s@src.test" % (k, t) for k in ("mixed", "rset", "quit"))
    with Client(gw.port) as c:
        c.ehlo()
        res = transact(c, s_ok, ["one@example.com", "stranger@elsewhere.test", "two@example.net"],
                       make_message())
        assert res.delivered and [r.code for r in res.rcpt] == [250, 550, 250], res
        assert res.rcpt[1].esc == "5.7.1", res.rcpt[1]
        assert c.cmd("MAIL FROM:<%s>" % s_rset).code == 250
        r = c.cmd("RCPT TO:<victim@elsewhere.test>")
        assert r.code == 550 and r.esc == "5.7.1", r
        assert c.cmd("RSET").code == 250
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % s_quit).code == 250
        assert c.cmd("RCPT TO:<victim2@elsewhere.test>").code == 550
        assert c.cmd("QUIT").code == 221

    def reply_of(rec, n, code):
        v = rec.get("rcpt.%d.reply" % n, "")
        return re.match(r"%d \d\.\d{1,3}\.\d{1,3}\b" % code, v) is not None

    rec = wait_tx(gw, lambda r: r.get("from") == s_ok)
    assert rec, "no event=tx line with from=%s:\n%s" % (s_ok, gw.log_tail(10))
    assert [rec.get("rcpt.%d" % n) for n in (1, 2, 3)] == [
        "one@example.com", "stranger@elsewhere.test", "two@example.net"], rec
    assert reply_of(rec, 1, 250) and reply_of(rec, 3, 250), rec
    assert rec.get("rcpt.2.reply", "").startswith("550 5.7.1"), rec
    assert "rcpt.4" not in rec, rec
    assert rec.get("result", "").startswith("250 "), rec
    assert rec.get("end") == "data", rec
    for sender, end in ((s_rset, "rset"), (s_quit, "quit")):
        rec = wait_tx(gw, lambda r: r.get("from") == sender)
        assert rec, ("a transaction whose only recipient was refused, ended by %s, has no event=tx "
                     "line (from=%s):\n%s" % (end.upper(), sender, gw.log_tail(10)))
        assert rec.get("rcpt.1", "").startswith("victim"), rec
        assert rec.get("rcpt.1.reply", "").startswith("550 5.7.1"), rec
        assert rec.get("end") == end, rec


def test_log_hostile_client_text_stays_in_its_field(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1)
    t = tok()
    base_from = "base-%s@src.test" % t
    hostile = '"x\\" rcpt=<z@z> result=\\"250"@sender.test'
    with Client(gw.port) as c:
        c.ehlo()
        assert transact(c, base_from, ["user@example.com"], make_message()).delivered
        res = transact(c, hostile, ["user@example.com"], make_message())
        assert res.delivered, res
    base = wait_tx(gw, lambda r: r.get("from") == base_from)
    assert base, "no tx line for the plain transaction:\n" + gw.log_tail(10)
    rec = wait_tx(gw, lambda r: r.get("from") == hostile)
    lines = [l for l in gw.log().splitlines() if "event=tx" in l]
    assert rec, "no tx line whose from is exactly %s:\n%s" % (hostile, "\n".join(lines))
    assert set(rec) == set(base), "keys differ from a plain transaction's: %r" % (
        set(rec) ^ set(base))
    assert rec.get("rcpt.1") == "user@example.com" and rec.get("result", "").startswith("250 "), rec

    tried = []
    for i, name in enumerate(['a=b"c\\d', 'h=1 "two words" x=y', 'rcpt=<z@z> result="250"']):
        with Client(gw.port) as c:
            assert c.greet().code == 220
            r = c.cmd("EHLO " + name)
            if r.code != 250:
                continue
            sender = "helo%d-%s@src.test" % (i, t)
            res = transact(c, sender, ["user@example.com"], make_message())
            assert res.delivered, res
        tried.append(name)
        rec = wait_tx(gw, lambda r: r.get("from") == sender)
        assert rec, "no tx line with from=%s:\n%s" % (sender, gw.log_tail(5))
        assert rec.get("helo") == name, "EHLO %r logged as helo=%r" % (name, rec.get("helo"))
        assert set(rec) == set(base), "EHLO %r: keys differ: %r" % (name, set(rec) ^ set(base))
    print("HELO names accepted and checked: %r" % tried)


def test_log_command_timeout_is_the_reason(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, command_timeout=2)
    t = tok()
    sender = "cut-%s@src.test" % t
    a = Client(gw.port, timeout=10)
    b = Client(gw.port, timeout=10)
    try:
        a.ehlo("idle.test")
        b.ehlo("cut.test")
        assert b.cmd("MAIL FROM:<%s>" % sender).code == 250
        assert b.cmd("RCPT TO:<user@example.com>").code == 250
        for c in (a, b):
            r = c.rest_replies(timeout=2 + 3)
            assert [(x.code, x.esc) for x in r] == [(421, "4.4.2")], r
    finally:
        a.close()
        b.close()
    deadline = time.monotonic() + 3
    while len(disconnect_lines(gw)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    discs = disconnect_lines(gw)[1:]          # the first is wait_ready's probe (QUIT)
    assert len(discs) == 2, discs
    for l in discs:
        assert re.search(r"\breason=command_timeout\b", l), (
            "a session ended by the command timeout: %s" % l)
    session = tx_line_session(gw, sender, timeout=3)
    assert session, ("the transaction cut by the command timeout has no tx line:\n" + gw.log_tail(10))
    assert any(re.search(r'\bsession="?%s\b' % re.escape(session), l) for l in discs), discs
    rec = wait_tx(gw, lambda r: r.get("session") == session)
    assert rec and "end" in rec and rec["end"] not in ("data", "quit", "rset"), rec


def test_log_ids_unique_and_received_id_is_the_tx(sink, tmp_path, request):
    """Two gateways started in the same second (launched back to back, then
    waited for): no session id in common. And the id in a message's
    Received: header is its log line's tx."""
    frac = time.time() % 1.0
    if frac > 0.5:
        time.sleep(1.0 - frac + 0.01)
    gws = []
    for k in range(2):
        opts = {"listen": "127.0.0.1:%d" % free_port(), "workers": 1, "hostname": "mx.test",
                "relay_domains": "example.com,example.net", "downstream": sink.addr,
                "drain_timeout": 5, "log_level": "info", "maildir": str(tmp_path / "mail")}
        gws.append(Gateway(opts, log_path=str(tmp_path / ("mxgate-ids-%d.log" % k))))
    request.node._mxgates = gws              # their log tails go into a failure report
    t0 = time.time()
    try:
        for g in gws:
            g.launch()
        t1 = time.time()
        for g in gws:
            g.wait_ready(10)
        assert int(t0) == int(t1), "the two launches straddled a second (%.3f, %.3f)" % (t0, t1)
        _ids_unique_and_received_id(sink, *gws)
    finally:
        rcs = [g.stop() for g in gws]
    assert rcs == [0, 0], rcs


def _ids_unique_and_received_id(sink, g1, g2):
    t = tok()
    ids = {}
    for g, name in ((g1, "one"), (g2, "two")):
        mid = new_msgid("ids-" + name)
        res = send_mail(g.port, mail_from="%s-%s@src.test" % (name, t), msg=make_message(mid))
        assert res.delivered, res
        ids[name] = mid
    sess = {}
    for g, name in ((g1, "one"), (g2, "two")):
        deadline = time.monotonic() + 3
        while len(disconnect_lines(g)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        sess[name] = set()
        for l in disconnect_lines(g):
            m = re.search(r'\bsession=("?)([^" ]+)\1', l)
            assert m, l
            sess[name].add(m.group(2))
        assert len(sess[name]) == 2, (name, disconnect_lines(g))
    assert not (sess["one"] & sess["two"]), (
        "two gateways started in the same second gave the same session ids: %r" % (sess["one"] & sess["two"]))
    m = sink.wait_message(ids["one"])
    received, _ = split_received(m.data)
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", received).decode("utf-8", "replace")
    mm = re.search(r"\bid <?([^\s<>;]+)>?", unfolded)
    assert mm, unfolded
    rec = wait_tx(g1, lambda r: r.get("from") == "one-%s@src.test" % t)
    assert rec, "no tx line with from=one-%s@src.test:\n%s" % (t, g1.log_tail(5))
    assert rec.get("tx") == mm.group(1), (
        "Received: says id %s, the log line says tx=%s" % (mm.group(1), rec.get("tx")))


# ================================================================ 5. slow clients


def test_slowloris_cut_at_command_timeout(sink, gateway):
    ct = 4
    gw = gateway(downstream=sink.addr, workers=1, command_timeout=ct)
    results = {}

    def slow(i):
        try:
            c = Client(gw.port, timeout=10)
        except OSError as e:
            results[i] = ("connect", repr(e))
            return
        try:
            c.greet()
            t_first = time.monotonic()
            for k in range(ct + 6):
                try:
                    c.send(b"NOOPX"[k % 5:k % 5 + 1])
                except OSError:
                    results[i] = ("closed", time.monotonic() - t_first, bytes(c.buf) + c.recv_quiet(0.2))
                    return
                if c.wait_closed(1.0):
                    results[i] = ("closed", time.monotonic() - t_first, bytes(c.buf))
                    return
            results[i] = ("open", time.monotonic() - t_first, bytes(c.buf))
        finally:
            c.close()

    threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(10)]
    for th in threads:
        th.start()
    idle = Client(gw.port, timeout=10)
    idle.greet()
    t_idle = time.monotonic()
    idle_closed = idle.wait_closed(ct + 1.5 + SLACK)
    idle_took = time.monotonic() - t_idle
    idle_bytes = bytes(idle.buf)
    idle.close()
    for th in threads:
        th.join(ct + 10)
    assert len(results) == 10, results
    bad = {i: r for i, r in results.items()
           if not (r[0] == "closed" and ct - 1.0 <= r[1] <= ct + 1.5 + SLACK
                   and re.fullmatch(rb"421 4\.4\.2[^\r\n]*\r\n", r[2]))}
    assert not bad, ("clients sending one byte a second (command_timeout=%d): want 421 4.4.2 and a "
                     "close %d s after the first byte; got %r" % (ct, ct, bad))
    assert idle_closed and re.fullmatch(rb"421 4\.4\.2[^\r\n]*\r\n", idle_bytes), (idle_took, idle_bytes)
    assert ct - 1.0 <= idle_took <= ct + 1.5 + SLACK, idle_took


def test_data_min_rate(sink, gateway):
    dt = 4
    gw = gateway(downstream=sink.addr, workers=1, data_timeout=dt, data_min_rate=1000)
    fast = {}

    def fast_client():
        mid = new_msgid("fast")
        fast["res"] = send_mail(gw.port, msg=make_message(mid, body=(b"f" * 98 + b"\r\n") * 2000))
        fast["mid"] = mid

    with Client(gw.port, timeout=10) as c:
        c.ehlo("trickle.test")
        start_body(c, "slow@src.test")
        t0 = time.monotonic()
        th = threading.Thread(target=fast_client, daemon=True)
        th.start()
        c.send(make_message(new_msgid("trickle"))[:100])
        closed, got = False, b""
        for k in range(int((dt + 3) / 0.2)):
            try:
                c.send(b"X-Pad: %02d\r\n" % (k % 100))       # 10 bytes every 0.2 s: 50 B/s
            except OSError:
                closed = True
                break
            if c.wait_closed(0.2):
                closed = True
                break
        took = time.monotonic() - t0
        got = bytes(c.buf)
        th.join(30)
    assert closed and took <= dt + 2 + SLACK, "a 50 B/s body still open after %.1f s" % took
    assert re.match(rb"421 4\.4\.2[ -]", got), got
    assert gw.wait_log(r"event=disconnect.*\breason=\"?data_rate\b", timeout=2), gw.log_tail(5)
    assert fast.get("res") is not None and fast["res"].delivered, fast
    assert sink.wait_message(fast["mid"]) is not None


# ================================================================ 6. the downstream is not the client's fault


def test_downstream_down_pipelining_client_not_dropped(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=3)
    sink.stop()
    with Client(gw.port, timeout=10) as c:
        c.ehlo()
        for i in range(15):
            c.send(GROUP % ("s%d@src.test" % i, "user@example.com"))
            rs = collect(c, 3, time.monotonic() + 3 + 2)
            assert codes(rs) == [(451, "4.4.1")] * 3, (
                "transaction %d of 15 with the downstream down: want 3 x 451 4.4.1, got %r" % (i + 1, rs))
        sink.start()
        mid, hist = deliver_on_session(c, sink, "back", window=6)
        assert mid, "no delivery on the same session once the downstream was back: %r" % hist


# ================================================================ 7. downstream_timeout is time without progress


def test_downstream_timeout_is_time_without_progress(make_sink, gateway):
    # A small receive buffer at the sink: what it has not read yet stays
    # mostly on mxgate's side, where mxgate can see it move.
    sink = make_sink(rcvbuf=32768)
    gw = gateway(downstream=sink.addr, workers=1, downstream_timeout=2)
    body = (b"y" * 98 + b"\r\n") * (400 * 1024 // 100)
    sink.read_delay = 16384 / (50 * 1024)            # 16 KiB reads: about 50 KiB/s
    mid = new_msgid("slowread")
    t0 = time.monotonic()
    res = send_mail(gw.port, msg=make_message(mid, body=body), timeout=30)
    took = time.monotonic() - t0
    assert res.delivered, ("a 400 KiB message to a downstream reading 50 KiB/s (downstream_timeout=2) "
                           "after %.1f s: %r" % (took, res))
    assert sink.wait_message(mid) is not None
    print("slow read: %.1f s" % took)
    sink.read_delay = 0
    sink.stall_after_data_bytes = 100 * 1024
    with Client(gw.port, timeout=15) as c:
        c.ehlo()
        start_body(c)
        c.sock.settimeout(15)
        c.sock.sendall(make_message(new_msgid("stall"), body=body) + b".\r\n")
        t_dot = time.monotonic()
        assert sink.wait_for(lambda s: s.stalled_at is not None, timeout=5), "the sink never stalled"
        t_stall = max(t_dot, sink.stalled_at)
        end = collect(c, 1, t_stall + 2 + 1.0 + SLACK)
        print("stall: 451 %.1f s after the stall" % (time.monotonic() - t_stall))
        assert codes(end) == [(451, "4.4.1")], "downstream stopped reading mid-body: %r" % end
