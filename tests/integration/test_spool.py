"""
delivery = spool: 250 only once the message is durable in spool_dir, then
delivered from there to the downstream (the recording sink), retried,
returned to its sender in a DSN (RFC 3464) when it cannot be delivered.

Counts are by unique Message-ID at the sink: every message that got a 250
must arrive (at least once; a duplicate after a kill -9 is allowed, a loss
never is).
"""
import email
import email.policy
import os
import re
import signal
import struct
import threading
import time

import pytest

from mxtest import Client, Closed, free_port, make_message, message_id, new_msgid, send_mail, transact, unstuff
from spoolfmt import Segment

RCPT = "user@example.com"


def spool_gw(gateway, tmp_path, downstream, **kw):
    opts = dict(downstream=downstream, delivery="spool", spool_dir=str(tmp_path / "spool"))
    opts.update(kw)
    return gateway(**opts)


def sender_session(port, n, acked, lock, tag, stop=None, rcpts=(RCPT,)):
    """One persistent session sending up to n messages; the Message-IDs that
    got a 250 go into acked. Stops quietly when the gateway goes away."""
    try:
        with Client(port, timeout=20) as c:
            if c.greet().code != 220 or c.cmd("EHLO client.test").code != 250:
                return
            for i in range(n):
                if stop is not None and stop.is_set():
                    return
                mid = new_msgid("%s%d" % (tag, i))
                res = transact(c, "sender@src.test", list(rcpts), make_message(mid))
                if res.stage == "eod" and res.final is not None and res.final.code == 250:
                    with lock:
                        acked.add(mid)
    except (Closed, OSError):
        return


def load(port, sessions, per_session, tag="m", stop=None):
    acked, lock = set(), threading.Lock()
    th = [threading.Thread(target=sender_session, args=(port, per_session, acked, lock, "%s%d-" % (tag, k), stop))
          for k in range(sessions)]
    for t in th:
        t.start()
    return th, acked


def arrived_ids(sink):
    with sink.cond:
        return [message_id(m.wire) for m in sink.messages]


def wait_ids(sink, want, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = set(arrived_ids(sink))
        if want <= got:
            return got
        time.sleep(0.1)
    return set(arrived_ids(sink))


def test_250_after_the_spool_and_delivered(sink, gateway, tmp_path):
    gw = spool_gw(gateway, tmp_path, sink.addr)
    msg = make_message()
    res = send_mail(gw.port, rcpts=(RCPT, "other@example.com"), msg=msg)
    assert res.code == 250, res
    assert re.match(r"2.0.0 Ok: queued as [0-9a-f]{16}-1$", res.final.text), res.final.text
    m = sink.wait_message(message_id(msg))
    assert m is not None
    assert m.mail_from == "sender@src.test" and sorted(m.rcpts) == sorted([RCPT, "other@example.com"])
    body = unstuff(m.wire)
    assert body.startswith(b"Received: from client.test"), body[:200]
    assert body.endswith(msg), body[-200:]
    qid = res.final.text.rsplit(" ", 1)[1]
    rec = gw.wait_record(lambda r: r.get("event") == "delivery" and r.get("tx") == qid, timeout=5)
    assert rec and rec["result"] == "delivered" and rec["attempt"] == "1", rec
    # the segment stays (the current one) and holds the message and its DONE
    segs = [f for f in os.listdir(tmp_path / "spool") if f.endswith(".seg")]
    assert segs, os.listdir(tmp_path / "spool")


@pytest.mark.parametrize("mode", ["spool", "relay-then-spool"])
def test_downstream_down_1000_then_up_exactly_once(make_sink, gateway, tmp_path, mode):
    """The downstream is down while 1000 messages are taken; once it is up
    they all arrive exactly once, without waiting for a retry interval."""
    port = free_port()
    gw = spool_gw(gateway, tmp_path, "127.0.0.1:%d" % port, retry_max_interval=600, delivery=mode)
    th, acked = load(gw.port, 10, 100)
    for t in th:
        t.join(120)
    assert len(acked) == 1000, len(acked)
    time.sleep(1.0)  # deliveries found the server down
    sink = make_sink(port=port)
    t0 = time.monotonic()
    got = wait_ids(sink, acked, 30)
    took = time.monotonic() - t0
    missing = acked - got
    assert not missing, "%d of 1000 never arrived" % len(missing)
    ids = arrived_ids(sink)
    assert len(ids) == len(set(ids)) == 1000, "duplicates: %d" % (len(ids) - len(set(ids)))
    assert took < 20, "took %.1f s: the queue waited for a retry" % took


def test_kill_9_mid_load_loses_nothing_acknowledged(make_sink, gateway, tmp_path):
    """kill -9 in the middle of a 5000-message load, then a restart on the
    same spool: every message that got a 250 arrives."""
    sink = make_sink()
    opts = dict(downstream=sink.addr, delivery="spool", spool_dir=str(tmp_path / "spool"))
    gw = gateway(**opts)
    stop = threading.Event()
    th, acked = load(gw.port, 10, 500, stop=stop)
    deadline = time.monotonic() + 60
    while len(acked) < 1500 and time.monotonic() < deadline and any(t.is_alive() for t in th):
        time.sleep(0.05)
    gw.kill()  # SIGKILL
    gw.start_failed = True  # killed on purpose: teardown does not ask it to drain
    stop.set()
    for t in th:
        t.join(30)
    n = len(acked)
    assert 0 < n < 5000, n
    gw2 = gateway(listen="127.0.0.1:%d" % gw.port, **opts)
    got = wait_ids(sink, acked, 60)
    missing = acked - got
    assert not missing, "%d of %d acknowledged messages lost, e.g. %s" % (len(missing), n, sorted(missing)[:3])
    assert gw2.wait_log(r"event=spool_recovered", timeout=1)


def test_a_torn_tail_is_skipped(make_sink, gateway, tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    now = int(time.time() * 1000)
    seg = Segment(str(d / "w0-00000007.seg"), worker=0, created_ms=now)
    ids = [new_msgid("torn%d" % i) for i in range(3)]
    for i, mid in enumerate(ids):
        body = make_message(mid).replace(b"\r\n.", b"\r\n..")
        seg.msg((0x5151, i + 1), b"sender@src.test", [RCPT.encode()], body, arrival_ms=now)
    seg.done((0x5151, 3))  # the third was delivered before the crash
    seg.save(tail=b"MXsp\x01\x01\x00\x00\xff\xff")  # a record torn by the crash
    sink = make_sink()
    gw = spool_gw(gateway, tmp_path, sink.addr)
    got = wait_ids(sink, set(ids[:2]), 10)
    assert set(ids[:2]) <= got and ids[2] not in got, got
    rec = gw.wait_record(lambda r: r.get("event") == "spool_recovered" and r.get("worker") == "0", timeout=2)
    assert rec and rec["messages"] == "2" and int(rec["torn"]) > 0, rec
    # both of the old segment's messages are done: the file goes
    deadline = time.monotonic() + 5
    while os.path.exists(d / "w0-00000007.seg") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(d / "w0-00000007.seg")


def dsns(sink, timeout):
    sink.wait_for(lambda s: any(x.mail_from == "" for x in s.messages), timeout)
    with sink.cond:
        return [x for x in sink.messages if x.mail_from == ""]


def parse_dsn(wire):
    msg = email.message_from_bytes(unstuff(wire), policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert len(parts) == 3, [p.get_content_type() for p in parts]
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = list(parts[1].iter_parts()) if parts[1].is_multipart() else []
    if not blocks:  # some policies keep it as text: parse the fields ourselves
        text = parts[1].get_payload(decode=True).decode()
        blocks = [dict(re.findall(r"^([A-Za-z-]+): *(.*)$", b, re.M)) for b in text.split("\r\n\r\n") if b.strip()]
    else:
        blocks = [dict(b.items()) for b in blocks]
    return msg, parts, blocks


def test_a_5xx_bounces_only_the_refused_recipient(sink, gateway, tmp_path):
    sink.rcpt_replies = {"nobody@example.com": "550 5.1.1 <nobody@example.com>: no such user"}
    gw = spool_gw(gateway, tmp_path, sink.addr)
    msg = make_message()
    res = send_mail(gw.port, rcpts=(RCPT, "nobody@example.com"), msg=msg)
    assert res.code == 250, res
    m = sink.wait_message(message_id(msg))
    assert m and m.rcpts == [RCPT], m
    dsn = dsns(sink, 10)
    assert dsn, "no DSN"
    d = dsn[0]
    assert d.rcpts == ["sender@src.test"], d.rcpts
    import dsncheck
    summary = dsncheck.check(d.wire)  # wire form, defects, the parts: a second reader
    assert summary["final_recipients"] == ["nobody@example.com"] and summary["statuses"] == ["5.1.1"], summary
    msg_, parts, blocks = parse_dsn(d.wire)
    rcpt_blocks = [b for b in blocks if "Final-Recipient" in b]
    assert len(rcpt_blocks) == 1, blocks
    assert rcpt_blocks[0]["Final-Recipient"] == "rfc822; nobody@example.com"
    assert rcpt_blocks[0]["Status"] == "5.1.1"
    assert rcpt_blocks[0]["Action"] == "failed"
    assert "no such user" in rcpt_blocks[0].get("Diagnostic-Code", "")
    assert message_id(msg).encode() in parts[2].get_payload(decode=True)
    assert msg_["Auto-Submitted"] == "auto-replied"


def test_never_a_dsn_to_the_null_sender(sink, gateway, tmp_path):
    sink.rcpt_replies = {RCPT: "550 5.1.1 no such user"}
    gw = spool_gw(gateway, tmp_path, sink.addr)
    res = send_mail(gw.port, mail_from="", rcpts=(RCPT,))
    assert res.code == 250, res
    rec = gw.wait_record(lambda r: r.get("event") == "delivery", timeout=10)
    assert rec and rec["result"] == "bounced", rec
    time.sleep(0.5)
    assert not gw.wait_log(r"event=dsn ", timeout=0.1)
    assert not sink.all


def test_expiry_returns_a_dsn(sink, gateway, tmp_path):
    """The downstream defers one recipient for longer than max_queue_age:
    the message is retried, then returned (Action failed, a 4.x.x Status)."""
    sink.rcpt_replies = {RCPT: "451 4.2.0 mailbox busy"}
    gw = spool_gw(gateway, tmp_path, sink.addr, max_queue_age=3, retry_max_interval=1)
    res = send_mail(gw.port, rcpts=(RCPT,))
    assert res.code == 250, res
    dsn = dsns(sink, 15)
    assert dsn, gw.log_tail(20)
    _, parts, blocks = parse_dsn(dsn[0].wire)
    b = [b for b in blocks if "Final-Recipient" in b][0]
    assert b["Final-Recipient"] == "rfc822; " + RCPT
    assert b["Action"] == "failed" and b["Status"].startswith("4."), b
    tries = [r["result"] for r in gw.log_records() if r.get("event") == "delivery" and r.get("result") != "delivered"]
    assert tries[-1] == "expired" and tries.count("deferred") >= 1, tries


def test_expiry_while_the_downstream_is_down(gateway, make_sink, tmp_path):
    """No attempt reaches a server, yet the message still expires, and its
    DSN is delivered once the server is back."""
    port = free_port()
    gw = spool_gw(gateway, tmp_path, "127.0.0.1:%d" % port, max_queue_age=2)
    res = send_mail(gw.port, rcpts=(RCPT,))
    assert res.code == 250, res
    assert gw.wait_record(lambda r: r.get("event") == "delivery" and r.get("result") == "expired", timeout=10)
    sink = make_sink(port=port)
    dsn = dsns(sink, 10)
    assert dsn and dsn[0].rcpts == ["sender@src.test"]
    assert not [x for x in sink.messages if x.mail_from != ""]


def test_spool_full_gets_452(gateway, make_sink, tmp_path):
    """Past spool_max_bytes new mail gets 452 4.3.1; what was taken before
    is delivered when the downstream comes back."""
    port = free_port()
    gw = spool_gw(gateway, tmp_path, "127.0.0.1:%d" % port, spool_max_bytes=20000, workers=1)
    ok, full = [], []
    for i in range(40):
        msg = make_message(body=("x" * 98 + "\r\n") * 15)
        res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
        if res.code == 250:
            ok.append(message_id(msg))
        else:
            full.append(res)
    assert ok and full, (len(ok), len(full))
    assert all(r.final.code == 452 and r.final.esc == "4.3.1" for r in full), full[:3]
    assert len(ok) <= 20000 // 1500
    sink = make_sink(port=port)
    got = wait_ids(sink, set(ok), 15)
    assert set(ok) <= got
    # and room again once they are gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if send_mail(gw.port, rcpts=(RCPT,)).code == 250:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the spool never took mail again")


def test_a_failed_write_answers_451_and_loses_nothing(make_sink, gateway, tmp_path):
    """A file system that refuses the write: 451 4.3.0, never a 250 for a
    message not on disk."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    d = tmp_path / "spool"
    d.mkdir()
    rc = os.system("mount -t tmpfs -o size=256k tmpfs %s 2>/dev/null" % d)
    if rc != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        port = free_port()
        gw = spool_gw(gateway, tmp_path, "127.0.0.1:%d" % port, spool_min_free=0)
        ok, bad = [], []
        for i in range(20):
            msg = make_message(body=("y" * 98 + "\r\n") * 300)
            res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
            (ok if res.code == 250 else bad).append((message_id(msg), res))
        assert ok and bad, (len(ok), len(bad))
        assert all(r.final is not None and r.final.code in (451, 452) for _, r in bad), [r for _, r in bad][:3]
        assert gw.wait_log(r"event=spool_write_failed", timeout=1) or all(r.final.code == 452 for _, r in bad)
        gw.stop()
        s = make_sink(port=port)
        gw2 = spool_gw(gateway, tmp_path, s.addr, spool_min_free=0)
        got = wait_ids(s, {m for m, _ in ok}, 15)
        assert {m for m, _ in ok} <= got
        gw2.stop()
    finally:
        os.system("umount %s 2>/dev/null" % d)


def test_drain_with_a_queue_then_restart(make_sink, gateway, tmp_path):
    port = free_port()
    opts = dict(downstream="127.0.0.1:%d" % port, delivery="spool", spool_dir=str(tmp_path / "spool"))
    gw = gateway(**opts)
    ids = set()
    for i in range(5):
        msg = make_message()
        assert send_mail(gw.port, rcpts=(RCPT,), msg=msg).code == 250
        ids.add(message_id(msg))
    t0 = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - t0 < 5
    from mxtest import BINARY
    import subprocess
    p = subprocess.run([BINARY, "queue", "list", "--spool-dir", str(tmp_path / "spool")], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 0 and "5 messages" in p.stdout, p.stdout + p.stderr
    sink = make_sink(port=port)
    gateway(**opts)
    assert ids <= wait_ids(sink, ids, 10)


def test_metrics_show_the_queue(gateway, tmp_path):
    import urllib.request
    port = free_port()
    http = "127.0.0.1:%d" % free_port()
    gw = spool_gw(gateway, tmp_path, "127.0.0.1:%d" % port, http_listen=http)
    for i in range(3):
        assert send_mail(gw.port, rcpts=(RCPT,)).code == 250
    deadline = time.monotonic() + 5
    while True:
        text = urllib.request.urlopen("http://%s/metrics" % http, timeout=5).read().decode()
        vals = dict(re.findall(r"^(mxgate_spool_\w+(?:\{[^}]*\})?) (\d+)$", text, re.M))
        if vals.get("mxgate_spool_messages") == "3" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert vals["mxgate_spool_messages"] == "3", vals
    assert int(vals["mxgate_spool_bytes"]) > 3 * 200
    assert int(vals["mxgate_spool_fsyncs_total"]) >= 1
    assert int(vals["mxgate_spool_oldest_age_seconds"]) < 60


def test_delivery_spool_needs_a_downstream(gateway, tmp_path):
    with pytest.raises(BaseException) as e:
        gateway(delivery="spool", spool_dir=str(tmp_path / "spool"), ready_timeout=3)
    assert "delivery: spool needs a downstream to deliver to" in str(e.value), e.value


def test_low_free_space_gets_452(sink, gateway, tmp_path):
    """spool_min_free above what the file system has: 452 4.3.1 at MAIL,
    and nothing is written."""
    gw = spool_gw(gateway, tmp_path, sink.addr, spool_min_free="1000g")
    res = send_mail(gw.port, rcpts=(RCPT,))
    assert res.stage == "mail" and res.final.code == 452 and res.final.esc == "4.3.1", res
    assert not [f for f in os.listdir(tmp_path / "spool") if f.endswith(".seg")]


@pytest.mark.parametrize("fault", ["MAIL", "RCPT", "DATA", "EOD", "body", "451"])
def test_a_delivery_that_fails_at_each_step_is_retried(sink, gateway, tmp_path, fault):
    """The downstream fails a spooled message's delivery once, at each step
    (a close at MAIL, RCPT, DATA or the end of data, a close mid-body, a
    451 to the end of data): the message is delivered on a later attempt,
    and accepted exactly once."""
    calls = []

    def first_451(m):
        calls.append(m)
        return "451 4.3.0 try later" if len(calls) == 1 else None
    if fault == "body":
        sink.drop_after_data_bytes, sink.drop_times = 20000, 1
    elif fault == "451":
        sink.data_reply = first_451
    else:
        sink.fail_at = {fault: "close"}
    gw = spool_gw(gateway, tmp_path, sink.addr, retry_max_interval=1)
    msg = make_message(body=("f" * 70 + "\r\n") * 1000)
    res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
    assert res.code == 250, res
    if fault not in ("body", "451"):
        assert sink.wait_for(lambda s: s.failed_at, timeout=10), "the fault never happened"
        sink.fail_at = {}
    m = sink.wait_message(message_id(msg), timeout=20)
    assert m is not None, gw.log_tail(10)
    assert unstuff(m.wire).endswith(msg)
    time.sleep(0.5)
    assert [message_id(x.wire) for x in sink.messages].count(message_id(msg)) == 1


# ---- relay-then-spool


def rts_gw(gateway, tmp_path, sink, **kw):
    return spool_gw(gateway, tmp_path, sink.addr, delivery="relay-then-spool", **kw)


def test_relay_then_spool_relays_through_while_the_downstream_answers(sink, gateway, tmp_path):
    """The downstream's own replies reach the client (its 250, its 5xx, a
    RCPT's 4xx), and nothing is spooled."""
    sink.rcpt_replies = {"busy@example.com": "450 4.2.1 mailbox busy",
                         "nobody@example.com": "550 5.1.1 no such user"}
    gw = rts_gw(gateway, tmp_path, sink)
    msg = make_message()
    res = send_mail(gw.port, rcpts=(RCPT, "busy@example.com", "nobody@example.com"), msg=msg)
    assert res.code == 250 and res.final.text.startswith("2.0.0 ok"), res  # the sink's own words
    assert [r.code for r in res.rcpt] == [250, 450, 550], res.rcpt
    assert sink.wait_message(message_id(msg)).rcpts == [RCPT]
    sink.data_reply = "554 5.7.1 content refused"
    res = send_mail(gw.port, rcpts=(RCPT,))
    assert res.code == 554 and res.final.esc == "5.7.1", res
    assert not gw.wait_log(r"event=delivery ", timeout=0.5), "something was spooled"
    assert not gw.wait_log(r"fallback=spool", timeout=0.1)


def test_relay_then_spool_spools_a_4xx_at_end_of_data(sink, gateway, tmp_path):
    """The downstream answers the end of data 451 (its own trouble): the
    client gets the spool's 250, and the message arrives once the
    downstream takes it."""
    calls = []

    def first_451(m):
        calls.append(m)
        return "451 4.3.0 queue file write error" if len(calls) == 1 else None
    sink.data_reply = first_451
    gw = rts_gw(gateway, tmp_path, sink, retry_max_interval=1)
    msg = make_message()
    res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
    assert res.code == 250 and "queued as" in res.final.text, res
    m = sink.wait_message(message_id(msg), timeout=45)
    assert m is not None, gw.log_tail(10)
    rec = gw.wait_record(lambda r: r.get("event") == "tx" and r.get("fallback") == "spool", timeout=1)
    assert rec, "the transaction's line does not say it was spooled"


def test_relay_then_spool_when_the_downstream_dies_mid_body(sink, gateway, tmp_path):
    """The downstream closes after 200 KB of a 2 MB body: the client's body
    goes on into the spool, its 250 is the spool's, and the message
    arrives whole."""
    sink.drop_after_data_bytes = 200000
    sink.drop_times = 1
    gw = rts_gw(gateway, tmp_path, sink)
    body = ("z" * 70 + "\r\n") * 28000
    msg = make_message(body=body)
    res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
    assert res.code == 250 and "queued as" in res.final.text, res
    m = sink.wait_message(message_id(msg), timeout=45)
    assert m is not None, gw.log_tail(10)
    assert unstuff(m.wire).endswith(msg)


@pytest.mark.parametrize("verb", ["MAIL", "RCPT", "DATA"])
def test_relay_then_spool_when_the_downstream_closes_at(sink, gateway, tmp_path, verb):
    """The downstream closes at each command of a pipelined group: every
    command gets its reply here and the message is spooled, then delivered
    once the downstream behaves."""
    sink.fail_at = {verb: "close"}
    gw = rts_gw(gateway, tmp_path, sink)
    msg = make_message()
    with Client(gw.port) as c:
        c.greet()
        c.cmd("EHLO client.test")
        c.send(b"MAIL FROM:<sender@src.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % RCPT.encode())
        codes = [c.reply(timeout=10).code for _ in range(3)]
        assert codes == [250, 250, 354], codes
        sink.fail_at = {}
        from mxtest import dot_stuff
        c.send(dot_stuff(msg) + b".\r\n")
        r = c.reply(timeout=10)
        assert r.code == 250 and "queued as" in r.text, r
    assert sink.wait_message(message_id(msg), timeout=45) is not None, gw.log_tail(10)


# ---- mxgate queue on a running gateway (the control socket) and offline


def queue_cmd(tmp_path, *args, check=0):
    import subprocess
    from mxtest import BINARY
    p = subprocess.run([BINARY, "queue", *args, "--spool-dir", str(tmp_path / "spool")], capture_output=True,
                       text=True, timeout=30)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def queued_ids(tmp_path):
    import json
    return {m["id"]: m for m in json.loads(queue_cmd(tmp_path, "list", "--json").stdout)}


def test_queue_commands_on_a_live_gateway_and_offline(make_sink, gateway, tmp_path):
    port = free_port()
    opts = dict(downstream="127.0.0.1:%d" % port, delivery="spool", spool_dir=str(tmp_path / "spool"))
    gw = gateway(**opts)
    ids = {}
    for tag in ("a", "b", "c"):
        msg = make_message()
        res = send_mail(gw.port, rcpts=(RCPT,), msg=msg)
        assert res.code == 250, res
        ids[tag] = (res.final.text.rsplit(" ", 1)[1], message_id(msg))
    q = queued_ids(tmp_path)  # the lock is held: this went through the control socket
    assert set(q) == {i for i, _ in ids.values()}, q
    assert all(m["sender"] == "sender@src.test" and m["recipients"][0]["address"] == RCPT for m in q.values())
    text = queue_cmd(tmp_path, "list").stdout
    assert "-- 3 messages" in text, text
    # hold a, delete b
    assert "held" in queue_cmd(tmp_path, "hold", ids["a"][0]).stdout
    assert "(held)" in queue_cmd(tmp_path, "list").stdout
    assert queued_ids(tmp_path)[ids["a"][0]]["held"] is True
    assert "1 message deleted" in queue_cmd(tmp_path, "delete", ids["b"][0]).stdout
    assert set(queued_ids(tmp_path)) == {ids["a"][0], ids["c"][0]}
    p = queue_cmd(tmp_path, "delete", "ffffffffffffffff-9", check=1)
    assert "no such message" in p.stderr
    # the downstream comes back: flush sends c at once, a stays held
    sink = make_sink(port=port)
    queue_cmd(tmp_path, "flush")
    assert sink.wait_message(ids["c"][1], timeout=10)
    time.sleep(1.5)
    assert not sink.find(ids["a"][1]) and not sink.find(ids["b"][1])
    # a stays held across a restart, and offline commands see it
    assert gw.stop() == 0
    p = queue_cmd(tmp_path, "list")
    assert ids["a"][0] in p.stdout and "(held)" in p.stdout and ids["c"][0] not in p.stdout, p.stdout
    gw2 = gateway(**opts)
    time.sleep(1.5)
    assert not sink.find(ids["a"][1])
    assert "released" in queue_cmd(tmp_path, "release", "ALL").stdout
    assert sink.wait_message(ids["a"][1], timeout=10)
    assert queue_cmd(tmp_path, "list").stdout.strip() == "-- the queue is empty"
    assert not sink.find(ids["b"][1])
    assert gw2.wait_log(r"event=queue_hold|event=queue_release", timeout=1)


def test_offline_hold_release_flush(make_sink, gateway, tmp_path):
    port = free_port()
    opts = dict(downstream="127.0.0.1:%d" % port, delivery="spool", spool_dir=str(tmp_path / "spool"))
    gw = gateway(**opts)
    msgs = [make_message() for _ in range(2)]
    qids = []
    for m in msgs:
        res = send_mail(gw.port, rcpts=(RCPT,), msg=m)
        assert res.code == 250
        qids.append(res.final.text.rsplit(" ", 1)[1])
    assert gw.stop() == 0
    assert "held" in queue_cmd(tmp_path, "hold", qids[0]).stdout      # offline: a TRY record
    assert "-- 1 message flushed" in queue_cmd(tmp_path, "flush", "ALL").stdout  # the other one only
    sink = make_sink(port=port)
    gateway(**opts)
    assert sink.wait_message(message_id(msgs[1]), timeout=10)
    time.sleep(1.0)
    assert not sink.find(message_id(msgs[0]))
    assert "released" in queue_cmd(tmp_path, "release", qids[0]).stdout  # now live
    assert sink.wait_message(message_id(msgs[0]), timeout=10)


def test_a_message_the_downstream_cannot_take_is_returned_not_stuck(sink, gateway, tmp_path):
    """SMTPUTF8 to a downstream that does not offer it: the relay refuses
    MAIL itself (553 5.6.7) before anything is sent. The message is returned
    at once, and the delivery slot is free again: with one connection, the
    next messages still go (wirefuzz found deliveries hanging here)."""
    gw = spool_gw(gateway, tmp_path, sink.addr, downstream_connections=1, workers=1)
    res = send_mail(gw.port, rcpts=(RCPT,), mail_params="SMTPUTF8", msg=make_message(subject="caf\u00e9"))
    assert res.code == 250, res
    dsn = dsns(sink, 10)
    assert dsn, gw.log_tail(10)
    _, _, blocks = parse_dsn(dsn[0].wire)
    b = [b for b in blocks if "Final-Recipient" in b][0]
    assert b["Status"] == "5.6.7", b
    ids = []
    for _ in range(5):
        msg = make_message()
        assert send_mail(gw.port, rcpts=(RCPT,), msg=msg).code == 250
        ids.append(message_id(msg))
    assert set(ids) <= wait_ids(sink, set(ids), 10)


def test_relay_then_spool_passes_a_relay_refusal(sink, gateway, tmp_path):
    """relay-then-spool: the relay's own 5xx for a message this downstream
    cannot take (SMTPUTF8 it does not offer) is the client's answer, as in
    relay mode: refused now rather than bounced later."""
    gw = rts_gw(gateway, tmp_path, sink)
    res = send_mail(gw.port, rcpts=(RCPT,), mail_params="SMTPUTF8")
    assert res.stage == "mail" and res.final.code == 553 and res.final.esc == "5.6.7", res
    assert not gw.wait_log(r"fallback=spool|event=delivery ", timeout=0.5)
