"""
STARTTLS towards the downstream (downstream_tls = may | encrypt | verify),
against the recording sink speaking TLS with Python's ssl module: the
connection is encrypted before any mail, the session starts over (EHLO
again, RFC 3207 4.2), pooled connections stay encrypted across messages and
resume their TLS session when a new one opens, a certificate is verified by
its chain and name where asked, and every way it can fail (STARTTLS not
offered, refused, replies injected after the 220, a handshake that breaks,
a certificate that does not verify) gives the client a correct reply and
the log and /metrics a reason.

The PKI (a CA and the sink's certificate for sink.test and 127.0.0.1, plus
a self-signed one) is made here with the openssl command.
"""
import re
import signal
import ssl
import subprocess
import time
import urllib.request

import pytest

from conftest import DEFAULTS
from mxtest import HOST, Client, Gateway, StartError, free_port, make_message, new_msgid, send_mail, transact

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                                reason="openssl is not installed (make deps)")

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def run(*argv):
    subprocess.run(list(argv), check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    p = {k: str(d / k) for k in ("ca.pem", "ca.key", "sink.pem", "sink.key", "sink.csr", "ext", "self.pem",
                                 "self.key")}
    run("openssl", "req", "-x509", *EC, "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "2",
        "-subj", "/CN=mxgate test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-new", *EC, "-keyout", p["sink.key"], "-out", p["sink.csr"], "-subj", "/CN=sink.test")
    with open(p["ext"], "w") as f:
        f.write("subjectAltName=DNS:sink.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", p["sink.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
        "-CAcreateserial", "-out", p["sink.pem"], "-days", "2", "-extfile", p["ext"])
    run("openssl", "req", "-x509", *EC, "-keyout", p["self.key"], "-out", p["self.pem"], "-days", "2",
        "-subj", "/CN=sink.test", "-addext", "subjectAltName=DNS:sink.test,IP:127.0.0.1")
    return p


def server_ctx(pki, which="sink", **kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki[which + ".pem"], pki[which + ".key"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_sink(make_sink, pki, which="sink", **kw):
    s = make_sink()
    s.tls_context = server_ctx(pki, which, **kw)
    return s


def ds_gateway(gateway, sink, mode, **opts):
    o = dict(downstream=sink.addr, downstream_tls=mode, http_listen="%s:%d" % (HOST, free_port()), workers=1)
    o.update(opts)
    return gateway(**o)


def metrics(gw):
    with urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5) as r:
        return r.read().decode()


def metric(gw, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), metrics(gw), re.M)
    return int(m.group(1)) if m else None


def wait_metric(gw, name, pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        v = metric(gw, name)
        if v is not None and pred(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def tls_record(gw, result, timeout=5.0):
    return gw.wait_record(lambda r: r.get("event") == "downstream_tls" and r.get("result") == result, timeout)


# ---------------------------------------------------------------- encrypted


def test_verify_encrypts_before_any_mail_and_keeps_the_connection(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    gw = ds_gateway(gateway, sink, "verify", downstream_tls_ca_file=pki["ca.pem"],
                    downstream_tls_name="sink.test")
    mids = []
    with Client(gw.port) as c:
        c.ehlo()
        for i in range(20):
            mid = new_msgid("dstls")
            mids.append(mid)
            assert transact(c, "a@src.test", ["user@example.com"], make_message(mid)).delivered
    for mid in mids:
        m = sink.wait_message(mid)
        assert m and m.tls and m.tls[0] in ("TLSv1.3", "TLSv1.2"), m
    # one connection carried them all, encrypted, and said EHLO again inside TLS
    assert len({sink.find(mid)[0].conn_id for mid in mids}) == 1
    cid = sink.find(mids[0])[0].conn_id
    assert [t for c, t in sink.ehlos if c == cid] == [False, True], sink.ehlos
    assert not sink.tls_pipelined
    # nothing but EHLO and STARTTLS went before the handshake
    cmds = [l for c, l in sink.commands if c == cid]
    assert cmds[:3] == ["EHLO %s" % cmds[0].split()[1], "STARTTLS", cmds[0]], cmds[:4]
    rec = tls_record(gw, "verified")
    assert rec and rec["version"].startswith("TLSv1.") and rec["cipher"], gw.log_tail()
    assert metric(gw, 'mxgate_downstream_tls_total{result="verified"}') == 1


def test_verify_by_address_when_no_name_is_set(make_sink, gateway, pki):
    # the sink's certificate names 127.0.0.1 too: downstream's host is it
    sink = tls_sink(make_sink, pki)
    gw = ds_gateway(gateway, sink, "verify", downstream_tls_ca_file=pki["ca.pem"])
    mid = new_msgid("dstls-ip")
    assert send_mail(gw.port, msg=make_message(mid)).delivered
    assert sink.wait_message(mid).tls
    assert tls_record(gw, "verified"), gw.log_tail()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_both_versions(make_sink, gateway, pki, version):
    v = getattr(ssl.TLSVersion, version)
    sink = tls_sink(make_sink, pki, minimum_version=v, maximum_version=v)
    gw = ds_gateway(gateway, sink, "verify", downstream_tls_ca_file=pki["ca.pem"],
                    downstream_tls_name="sink.test")
    mid = new_msgid("dstls-ver")
    assert send_mail(gw.port, msg=make_message(mid)).delivered
    assert sink.wait_message(mid).tls[0] == version.replace("_", "."), sink.tls_sessions


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_a_new_connection_resumes_the_session_of_the_last(make_sink, gateway, pki, version):
    # mxgate relaying to mxgate: the inner one's STARTTLS issues tickets
    # (and counts the handshakes that resumed); one message per downstream
    # connection, so each next connection resumes the session before it
    sink = make_sink()
    inner = gateway(downstream=sink.addr, tls="may", tls_cert_file=pki["sink.pem"], tls_key_file=pki["sink.key"],
                    tls_protocols=version, http_listen="%s:%d" % (HOST, free_port()), workers=1)
    outer = gateway(downstream="%s:%d" % (HOST, inner.port), downstream_tls="verify",
                    downstream_tls_ca_file=pki["ca.pem"], downstream_tls_name="sink.test",
                    downstream_max_messages=1, http_listen="%s:%d" % (HOST, free_port()), workers=1)
    mids = [new_msgid("dstls-res") for _ in range(3)]
    for mid in mids:
        assert send_mail(outer.port, msg=make_message(mid)).delivered
    for mid in mids:
        m = sink.wait_message(mid)
        assert b"with ESMTPS" in m.data and (b"using TLSv1.3" if version == "tlsv1.3" else b"using TLSv1.2") \
            in m.data, m.data[:600]
    assert wait_metric(outer, "mxgate_downstream_tls_resumed_total", lambda n: n >= 2) >= 2, outer.log_tail()
    assert metric(inner, "mxgate_tls_resumed_total") >= 2, inner.log_tail()
    assert tls_record(outer, "verified")["resumed"] == "no"
    assert outer.wait_record(lambda r: r.get("event") == "downstream_tls" and r.get("resumed") == "yes")


def test_a_large_body_goes_through_tls_intact(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    gw = ds_gateway(gateway, sink, "encrypt", message_size_limit="20m")
    mid = new_msgid("dstls-big")
    line = b"".join(b"%05d the quick brown fox jumps over the lazy dog 0123456789\r\n" % i for i in range(100))
    body = line * 800                                         # about 6 MiB
    msg = make_message(mid, body=body)
    r = send_mail(gw.port, msg=msg, timeout=60)
    assert r.delivered, r
    m = sink.wait_message(mid, timeout=30)
    assert m and m.tls and m.data.endswith(body), (m, len(m.data) if m else 0)


def test_encrypt_takes_a_certificate_that_does_not_verify_and_says_so(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki, which="self")
    gw = ds_gateway(gateway, sink, "encrypt", downstream_tls_ca_file=pki["ca.pem"],
                    downstream_tls_name="sink.test")
    mid = new_msgid("dstls-untrusted")
    assert send_mail(gw.port, msg=make_message(mid)).delivered
    assert sink.wait_message(mid).tls
    rec = tls_record(gw, "unverified")
    assert rec and rec["certificate"], gw.log_tail()
    assert metric(gw, 'mxgate_downstream_tls_total{result="unverified"}') == 1


# ---------------------------------------------------------------- refused


@pytest.mark.parametrize("which,name,why", [
    ("self", "sink.test", "self-signed certificate"),     # no chain to the CA
    ("sink", "other.test", "hostname mismatch"),          # the wrong name
])
def test_verify_refuses_a_certificate_that_does_not_verify(make_sink, gateway, pki, which, name, why):
    sink = tls_sink(make_sink, pki, which=which)
    gw = ds_gateway(gateway, sink, "verify", downstream_tls_ca_file=pki["ca.pem"], downstream_tls_name=name)
    t0 = time.monotonic()
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-bad")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    assert time.monotonic() - t0 < 5, "the waiters hear a failed set-up at once"
    rec = gw.wait_record(lambda r: r.get("event") == "downstream_tls_failed")
    assert rec and why in rec["certificate"] and "then" not in rec, gw.log_tail()
    assert not sink.messages
    assert metric(gw, 'mxgate_downstream_tls_total{result="failed"}') >= 1
    # the pool backs off instead of reconnecting in a loop
    time.sleep(1)
    assert sink.connections <= 6, sink.connections


@pytest.mark.parametrize("mode", ["encrypt", "verify"])
def test_required_tls_and_a_server_without_starttls(sink, gateway, pki, mode):
    gw = ds_gateway(gateway, sink, mode, downstream_tls_ca_file=pki["ca.pem"])
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-none")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "tls_not_offered"), \
        gw.log_tail()
    assert not sink.messages
    # mail never went in plaintext: nothing but EHLO on the wire
    assert {l.split()[0] for _, l in sink.commands} == {"EHLO"}, sink.commands


def test_required_tls_and_starttls_refused(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    sink.starttls_reply = "454 4.7.0 TLS not available due to temporary reason"
    gw = ds_gateway(gateway, sink, "encrypt")
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-454")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "starttls_refused"), \
        gw.log_tail()
    assert not sink.messages


@pytest.mark.parametrize("mode", ["may", "encrypt"])
def test_replies_injected_after_the_220_fail_the_connection(make_sink, gateway, pki, mode):
    # a man in the middle answers the EHLO the client has not sent yet
    sink = tls_sink(make_sink, pki)
    sink.starttls_inject = b"250-injected.test\r\n250 PIPELINING\r\n"
    gw = ds_gateway(gateway, sink, mode)
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-inject")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "unexpected_reply"), \
        gw.log_tail()
    assert not sink.messages


def test_broken_tls_after_the_220(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    sink.starttls_garbage = b"250 this is not TLS\r\n"
    gw = ds_gateway(gateway, sink, "encrypt")
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-garbage")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    rec = gw.wait_record(lambda r: r.get("event") == "downstream_tls_failed")
    assert rec and rec["error"], gw.log_tail()
    assert not sink.messages


def test_a_handshake_that_stalls_times_out(make_sink, gateway, pki):
    # The server reads the ClientHello and answers nothing: the handshake
    # is held to downstream_timeout like any other wait on the server.
    sink = tls_sink(make_sink, pki)
    sink.starttls_stall = True
    gw = ds_gateway(gateway, sink, "encrypt", downstream_timeout=1)
    t0 = time.monotonic()
    r = send_mail(gw.port, msg=make_message(new_msgid("dstls-stall")))
    assert r.final.code == 451 and r.final.esc == "4.4.1", r
    assert time.monotonic() - t0 < 5, "the handshake is under downstream_timeout"
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "timeout"), \
        gw.log_tail()
    assert not sink.messages


# ---------------------------------------------------------------- opportunistic


def test_may_without_starttls_goes_in_plaintext(sink, gateway):
    gw = ds_gateway(gateway, sink, "may")
    mid = new_msgid("dstls-may-plain")
    assert send_mail(gw.port, msg=make_message(mid)).delivered
    m = sink.wait_message(mid)
    assert m and m.tls is None
    rec = tls_record(gw, "plaintext")
    assert rec and rec["reason"] == "not_offered", gw.log_tail()
    assert metric(gw, 'mxgate_downstream_tls_total{result="plaintext"}') == 1


def test_may_with_starttls_refused_goes_on_in_plaintext(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    sink.starttls_reply = "454 4.7.0 TLS not available due to temporary reason"
    gw = ds_gateway(gateway, sink, "may")
    mid = new_msgid("dstls-may-454")
    assert send_mail(gw.port, msg=make_message(mid)).delivered
    m = sink.wait_message(mid)
    assert m and m.tls is None
    assert sink.connections == 1          # the same connection went on
    rec = tls_record(gw, "plaintext")
    assert rec and rec["reason"] == "starttls_refused", gw.log_tail()


def test_may_with_a_broken_handshake_falls_back_to_plaintext(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    sink.starttls_garbage = b"\x15\x03\x03\x00\x02\x02\x28"  # a fatal alert instead of a ServerHello
    gw = ds_gateway(gateway, sink, "may")
    mid = new_msgid("dstls-may-fallback")
    r = send_mail(gw.port, msg=make_message(mid))
    assert r.delivered, r
    m = sink.wait_message(mid)
    assert m and m.tls is None
    rec = gw.wait_record(lambda r: r.get("event") == "downstream_tls_failed")
    assert rec and rec["then"] == "plaintext_300s", gw.log_tail()
    # the next connection did not try again
    assert [l for _, l in sink.commands].count("STARTTLS") == 1, sink.commands


def test_may_with_tls_encrypts(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki, which="self")
    gw = ds_gateway(gateway, sink, "may", workers=2)
    mids = [new_msgid("dstls-may") for _ in range(4)]
    for mid in mids:
        assert send_mail(gw.port, msg=make_message(mid)).delivered
    for mid in mids:
        assert sink.wait_message(mid).tls


# ---------------------------------------------------------------- failures under way


def test_the_server_gone_mid_session_answers_451_in_order(make_sink, gateway, pki):
    sink = tls_sink(make_sink, pki)
    sink.fail_at = {"RCPT": "close"}
    gw = ds_gateway(gateway, sink, "encrypt")
    with Client(gw.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n")
        rs = [c.reply(10) for _ in range(3)]
        # the session goes on: the next transaction gets a fresh connection
        mid = new_msgid("dstls-after-loss")
        sink.fail_at = {}
        assert c.cmd("RSET").code == 250
        assert transact(c, "a@src.test", ["user@example.com"], make_message(mid)).delivered
    assert [(r.code, r.esc) for r in rs] == [(250, "2.1.0"), (451, "4.4.1"), (451, "4.4.1")], rs
    assert sink.wait_message(mid).tls
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "closed_by_server")


def test_reload_turns_tls_on_for_new_connections(make_sink, gateway, pki, tmp_path):
    sink = tls_sink(make_sink, pki)
    conf = tmp_path / "gw.conf"
    conf.write_text("downstream_tls = off\n")
    gw = ds_gateway(gateway, sink, None, config=str(conf))
    a = new_msgid("dstls-before")
    assert send_mail(gw.port, msg=make_message(a)).delivered
    assert sink.wait_message(a).tls is None
    conf.write_text("downstream_tls = verify\ndownstream_tls_ca_file = %s\ndownstream_tls_name = sink.test\n"
                    % pki["ca.pem"])
    gw.signal(signal.SIGHUP)
    assert gw.wait_record(lambda r: r.get("event") == "reload" and r.get("result") == "ok"), gw.log_tail()
    b = new_msgid("dstls-after")
    assert send_mail(gw.port, msg=make_message(b)).delivered
    assert sink.wait_message(b).tls
    assert gw.wait_record(lambda r: r.get("event") == "downstream_closed" and r.get("reason") == "reload"), \
        gw.log_tail()


def test_a_bad_ca_file_stops_start_up(sink, gateway, tmp_path):
    o = dict(DEFAULTS, listen="%s:%d" % (HOST, free_port()), downstream=sink.addr, downstream_tls="verify",
             downstream_tls_ca_file=str(tmp_path / "missing.pem"), maildir=str(tmp_path / "mail"))
    g = Gateway(o, log_path=str(tmp_path / "bad.log"))
    with pytest.raises(StartError) as e:
        g.start(5)
    g.kill()
    assert "downstream_tls_ca_file" in str(e.value), e.value
