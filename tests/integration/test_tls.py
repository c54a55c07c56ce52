"""
STARTTLS (RFC 3207) with real clients: swaks --tls, Python's ssl, openssl
s_client -starttls smtp; TLS 1.2 and 1.3, resumption by ticket, the
certificate picked by the client's offer (ECDSA or RSA), the sharp edges
(plaintext pipelined after STARTTLS is never answered, the session starts
over after the handshake, a second STARTTLS, garbage instead of a
ClientHello, a stalled handshake), tls = encrypt, the Received: header and
the log line, and certificates reloaded on SIGHUP for new sessions.

Certificates are made here with the openssl command, self-signed, into the
test's temporary directory.
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from mxtest import HOST, BINARY, Client, free_port, make_message, new_msgid, transact

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                                reason="openssl is not installed (make deps)")


def make_cert(d, name, cn, kind="ec"):
    key, pem = d / (name + ".key"), d / (name + ".pem")
    algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *algo, "-nodes", "-keyout", str(key), "-out", str(pem), "-days", "2",
                    "-subj", "/CN=" + cn], check=True, capture_output=True, timeout=60)
    return str(pem), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {"ec": make_cert(d, "ec", "mx.test"), "rsa": make_cert(d, "rsa", "mx.test", "rsa"),
            "other": make_cert(d, "other", "other.test"), "dir": d}


def tls_gateway(gateway, certs, mode="may", pairs=("ec",), **opts):
    o = dict(tls=mode, tls_cert_file=",".join(certs[p][0] for p in pairs),
             tls_key_file=",".join(certs[p][1] for p in pairs))
    o.update(opts)
    return gateway(**o)


def client_ctx(**kw):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def starttls(port, ctx=None, session=None):
    """A socket in TLS after EHLO and STARTTLS, and the EHLO reply before."""
    c = Client(port)
    assert c.greet().code == 220
    ehlo = c.cmd("EHLO client.test")
    r = c.cmd("STARTTLS")
    assert r.code == 220 and r.esc == "2.0.0", r
    s = (ctx or client_ctx()).wrap_socket(c.sock, server_hostname="mx.test", session=session)
    c.sock = s
    return c, ehlo


def ehlo_lines(r):
    return [l.upper() for l in str(r).splitlines()]


# ---------------------------------------------------------------- real clients


def test_swaks_tls_delivers_with_esmtps_and_cipher(sink, gateway, certs):
    gw = tls_gateway(gateway, certs, downstream=sink.addr)
    mid = new_msgid("swaks-tls")
    p = subprocess.run(["swaks", "--server", "%s:%d" % (HOST, gw.port), "--tls", "--to", "user@example.com",
                        "--from", "a@src.test", "--header", "Message-Id: %s" % mid, "--helo", "client.test"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    m = sink.wait_message(mid)
    assert m, p.stdout
    head = m.data.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"Received: from client\.test \(client\.test \[127\.0\.0\.1\]\)|Received: from client\.test "
                     r"\(\[127\.0\.0\.1\]\)", head), head
    assert re.search(r"\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+ \(\d+/\d+ bits\)\)\r\n\tby mx\.test \(mxgate\) "
                     r"with ESMTPS id ", head), head
    rec = gw.wait_record(lambda r: r.get("event") == "tx" and r.get("end") == "data")
    assert rec["tls"] == "TLSv1.3" and rec["tls.cipher"].startswith("TLS_"), rec


def test_python_ssl_tls12_and_tls13_and_the_session_starts_over(sink, gateway, certs):
    gw = tls_gateway(gateway, certs, downstream=sink.addr)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_ctx(minimum_version=version, maximum_version=version)
        c, ehlo = starttls(gw.port, ctx)
        assert "250-STARTTLS" in ehlo_lines(ehlo) or "250 STARTTLS" in ehlo_lines(ehlo), ehlo
        assert c.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        # RFC 3207 4.2: the EHLO before TLS is forgotten
        r = c.cmd("MAIL FROM:<a@src.test>")
        assert r.code == 503, r
        e = c.cmd("EHLO client.test")
        assert e.code == 250 and not any("STARTTLS" in l for l in ehlo_lines(e)), e
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.esc == "5.5.1", r
        mid = new_msgid("py-tls")
        assert transact(c, "a@src.test", ["user@example.com"], make_message(mid)).delivered
        assert c.cmd("QUIT").code == 221
        c.close()
        assert sink.wait_message(mid)


def test_openssl_s_client_both_versions_and_resumption(gateway, certs, tmp_path):
    gw = tls_gateway(gateway, certs)
    sess = tmp_path / "sess.pem"
    for flag in ("-tls1_2", "-tls1_3"):
        # -ign_eof: read on to the 221 and the close, so a TLS 1.3 ticket is in
        base = ["openssl", "s_client", "-ign_eof", "-starttls", "smtp", "-connect", "%s:%d" % (HOST, gw.port), flag,
                "-servername", "mx.test"]
        first = subprocess.run(base + ["-sess_out", str(sess)], input="QUIT\r\n", capture_output=True, text=True,
                               timeout=30)
        assert "New, TLSv1." in first.stdout, first.stdout[-2000:]
        sess2 = tmp_path / "sess2.pem"
        again = subprocess.run(base + ["-sess_in", str(sess), "-sess_out", str(sess2)], input="QUIT\r\n",
                               capture_output=True, text=True, timeout=30)
        assert "Reused, TLSv1." in again.stdout, (flag, again.stdout[-2000:])
        # a resumed session gets a ticket for the next one (a TLS 1.3 client
        # uses each ticket once)
        # (TLS 1.2: the ticket stays good and none is sent; s_client then writes no file)
        third = subprocess.run(base + ["-sess_in", str(sess2 if flag == "-tls1_3" else sess)], input="QUIT\r\n", capture_output=True, text=True,
                               timeout=30)
        assert "Reused, TLSv1." in third.stdout, (flag, third.stdout[-2000:])
        assert ("Protocol  : TLSv1.2" if flag == "-tls1_2" else "TLSv1.3") in again.stdout


def test_the_certificate_follows_the_clients_offer(gateway, certs):
    gw = tls_gateway(gateway, certs, pairs=("ec", "rsa"))
    for sigalgs, want in (("ECDSA+SHA256", "id-ecPublicKey"), ("RSA-PSS+SHA256:RSA+SHA256", "rsaEncryption")):
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", "%s:%d" % (HOST, gw.port),
                            "-tls1_2", "-sigalgs", sigalgs, "-showcerts"], input="QUIT\r\n",
                           capture_output=True, text=True, timeout=30)
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", p.stdout, re.S)
        assert pem, p.stdout[-2000:]
        text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem.group(0), capture_output=True,
                              text=True).stdout
        assert want in text, (sigalgs, text[:600])


def test_python_resumes_with_a_ticket_on_any_worker(gateway, certs):
    gw = tls_gateway(gateway, certs, workers=2)
    ctx = client_ctx()
    session = None
    for i in range(6):   # several connections: both workers serve some
        c, _ = starttls(gw.port, ctx, session)
        assert c.cmd("EHLO client.test").code == 250     # reads the ticket too
        if i:
            assert c.sock.session_reused, i
        session = c.sock.session
        c.cmd("QUIT")
        c.close()


# ---------------------------------------------------------------- sharp edges


def test_decrypted_input_waits_out_a_verdict(sink, gateway, certs):
    # The end of data and QUIT in one TLS record while the downstream takes
    # its time: the engine stops at the end of data with QUIT decrypted and
    # not yet read; it must keep it (in a buffer of its own, not the
    # worker's, which the next session's records overwrite) and answer it
    # after the 250. Other sessions run meanwhile.
    sink.data_delay = 0.5
    gw = tls_gateway(gateway, certs, downstream=sink.addr, workers=1)
    c, _ = starttls(gw.port)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@src.test>").code == 250
    assert c.cmd("RCPT TO:<user@example.com>").code == 250
    assert c.cmd("DATA").code == 354
    mid = new_msgid("tls-wait")
    c.send(make_message(mid) + b".\r\nQUIT\r\n")
    others = []
    for _ in range(3):   # busy the worker's buffer while the first waits
        o, _ = starttls(gw.port)
        assert o.cmd("EHLO other.test").code == 250
        assert o.cmd("NOOP " + "x" * 400).code == 250
        others.append(o)
    r = c.reply(10)
    assert r.code == 250, r
    assert c.reply(10).code == 221
    c.close()
    for o in others:
        o.close()
    assert sink.wait_message(mid)


def test_plaintext_pipelined_after_starttls_is_never_answered(gateway, certs):
    gw = tls_gateway(gateway, certs)
    c = Client(gw.port)
    c.greet()
    c.cmd("EHLO client.test")
    c.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<injected@evil.test>\r\n")
    r = c.reply()
    assert r.code == 220, r
    c.sock = client_ctx().wrap_socket(c.sock, server_hostname="mx.test")
    c.sock.settimeout(1.0)
    try:
        extra = c.sock.recv(4096)
    except (socket.timeout, ssl.SSLError):
        extra = b""
    assert extra == b"", extra           # no reply to the NOOP or the MAIL, in TLS or not
    c.sock.settimeout(10)
    e = c.cmd("EHLO client.test")
    assert e.code == 250, e
    r = c.cmd("MAIL FROM:<a@src.test>")
    assert r.code == 250, r              # no transaction was left open by the injected MAIL
    c.close()
    assert "injected@evil.test" not in gw.log()


def test_garbage_instead_of_a_client_hello_closes_that_connection(gateway, certs):
    gw = tls_gateway(gateway, certs, http_listen="%s:%d" % (HOST, free_port()))
    c = Client(gw.port)
    c.greet()
    assert c.cmd("STARTTLS").code == 220
    c.send(b"EHLO this is not TLS\r\n")
    c.wait_closed(5)
    rec = gw.wait_record(lambda r: r.get("event") == "tls_failed")
    assert rec and rec["client"] == "127.0.0.1", gw.log_tail()
    rec = gw.wait_record(lambda r: r.get("event") == "disconnect" and r.get("reason") == "tls_failed")
    assert rec, gw.log_tail()
    # the worker goes on
    c2, _ = starttls(gw.port)
    assert c2.cmd("EHLO client.test").code == 250
    c2.close()
    body = urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5).read().decode()
    assert re.search(r'^mxgate_tls_handshakes_total\{result="failed"\} 1$', body, re.M), body
    assert re.search(r'^mxgate_tls_handshakes_total\{result="ok"\} 1$', body, re.M), body
    # which TLS runs, said at start-up and on /metrics: user space here
    assert gw.wait_log(r"event=tls_mode mode=user ktls=(possible|unavailable) note=", 1), gw.log_tail()
    assert re.search(r'^mxgate_tls_ktls 0$', body, re.M), body


def test_a_stalled_handshake_times_out(gateway, certs):
    gw = tls_gateway(gateway, certs, tls_handshake_timeout=1)
    c = Client(gw.port)
    c.greet()
    assert c.cmd("STARTTLS").code == 220
    c.send(b"\x16\x03\x01\x02\x00\x01")   # the start of a ClientHello, then nothing
    t0 = time.monotonic()
    c.wait_closed(6)
    assert time.monotonic() - t0 < 5
    assert gw.wait_record(lambda r: r.get("event") == "disconnect" and r.get("reason") == "tls_timeout"), \
        gw.log_tail()


def test_starttls_refused_where_it_makes_no_sense(gateway, certs):
    gw = tls_gateway(gateway, certs)
    with Client(gw.port) as c:
        c.ehlo()
        r = c.cmd("STARTTLS now")
        assert r.code == 501 and r.esc == "5.5.4", r
        assert c.cmd("MAIL FROM:<a@src.test>").code == 250
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.esc == "5.5.1", r
    plain = gateway()   # tls off: not offered, not taken
    with Client(plain.port) as c:
        c.greet()
        e = c.cmd("EHLO client.test")
        assert not any("STARTTLS" in l for l in ehlo_lines(e)), e
        r = c.cmd("STARTTLS")
        assert r.code == 502 and r.esc == "5.5.1", r


def test_encrypt_refuses_mail_in_plaintext(sink, gateway, certs):
    gw = tls_gateway(gateway, certs, mode="encrypt", downstream=sink.addr)
    with Client(gw.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@src.test>")
        assert r.code == 530 and r.esc == "5.7.0", r
    c, _ = starttls(gw.port)
    assert c.cmd("EHLO client.test").code == 250
    mid = new_msgid("encrypt")
    assert transact(c, "a@src.test", ["user@example.com"], make_message(mid)).delivered
    c.close()
    assert sink.wait_message(mid)


# ---------------------------------------------------------------- configuration


def test_certificates_reloaded_on_sighup_for_new_sessions(gateway, certs, tmp_path):
    conf = tmp_path / "tls.conf"
    pem, key = certs["ec"]
    conf.write_text("tls = may\ntls_cert_file = %s\ntls_key_file = %s\n" % (pem, key))
    gw = gateway(config=str(conf))
    old, _ = starttls(gw.port)
    assert old.cmd("EHLO client.test").code == 250
    der = lambda path: ssl.PEM_cert_to_DER_cert(open(path).read())
    assert old.sock.getpeercert(binary_form=True) == der(pem)
    pem2, key2 = certs["other"]
    conf.write_text("tls = may\ntls_cert_file = %s\ntls_key_file = %s\n" % (pem2, key2))
    os.kill(gw.pid, signal.SIGHUP)
    assert gw.wait_log(r"event=reload result=ok generation=2 changed=tls_cert_file,tls_key_file", 5), gw.log_tail()
    time.sleep(0.3)
    new, _ = starttls(gw.port)
    assert new.sock.getpeercert(binary_form=True) == der(pem2)
    # the session opened before the reload goes on in TLS
    assert old.cmd("NOOP").code == 250
    old.close()
    new.close()
    # a key that does not match its certificate: the reload fails, the old one stays
    conf.write_text("tls = may\ntls_cert_file = %s\ntls_key_file = %s\n" % (pem2, key))
    os.kill(gw.pid, signal.SIGHUP)
    assert gw.wait_log(r"event=reload result=failed .*tls_key_file: .*(mismatch|does not match)", 5), gw.log_tail()


@pytest.mark.parametrize("opts,message", [
    ({"tls": "may"}, "tls = may needs tls_cert_file and tls_key_file"),
    ({"tls": "may", "tls_cert_file": "/nonexistent.pem", "tls_key_file": "/nonexistent.key"},
     "tls_cert_file: /nonexistent.pem"),
    ({"tls": "may", "tls_protocols": "tlsv1.3", "tls_ciphersuites": "NOPE"}, "tls_ciphersuites: NOPE"),
    ({"tls": "may", "tls_cert_file": " , ", "tls_key_file": " , "}, "no certificate and key pair"),
])
def test_bad_tls_configuration_stops_start_up(certs, opts, message):
    o = dict(opts)
    if "tls_cert_file" not in o and o != {"tls": "may"}:
        o["tls_cert_file"], o["tls_key_file"] = certs["ec"]
    argv = [BINARY, "--listen", "%s:%d" % (HOST, free_port()), "--user", "root", "--http-listen", ""]
    for k, v in o.items():
        argv += ["--" + k.replace("_", "-"), v]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_handshakes_count_twice_against_the_address_limit(gateway, certs):
    """A handshake in progress counts once more against its address's
    max_connections_per_ip: one address cannot fill a worker with them."""
    gw = tls_gateway(gateway, certs, max_connections_per_ip=3, tls_handshake_timeout=30)
    first = Client(gw.port)
    first.greet()
    first.cmd("EHLO one.test")
    assert first.cmd("STARTTLS").code == 220         # 1 connection + 1 handshake
    second = Client(gw.port)                          # 3: still within the limit
    second.greet()
    second.cmd("EHLO two.test")
    r = second.cmd("STARTTLS")
    assert r.code == 454 and r.esc == "4.7.0", r      # would be 4
    assert second.cmd("NOOP").code == 250             # the session goes on in plaintext
    first.sock = client_ctx().wrap_socket(first.sock, server_hostname="mx.test")
    assert first.cmd("EHLO one.test").code == 250      # its handshake is done: counted once again
    r = second.cmd("STARTTLS")
    assert r.code == 220, r
    second.sock = client_ctx().wrap_socket(second.sock, server_hostname="mx.test")
    assert second.cmd("EHLO two.test").code == 250
    first.close()
    second.close()


def test_ticket_keys_rotate_and_survive_a_reload(gateway, certs, tmp_path):
    """Tickets sealed by the current key resume, and keep resuming for one
    rotation more (renewed); past two rotations they no longer do. A reload
    keeps the keys: a ticket from before it resumes after it."""
    conf = tmp_path / "tls.conf"
    pem, key = certs["ec"]
    text = "tls = may\ntls_cert_file = %s\ntls_key_file = %s\ntls_ticket_rotation = 2\n" % (pem, key)
    conf.write_text(text)
    gw = gateway(config=str(conf))
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)   # one ticket per handshake, as sent

    def connect(session=None):
        c, _ = starttls(gw.port, ctx, session)
        assert c.cmd("EHLO client.test").code == 250
        reused, sess = c.sock.session_reused, c.sock.session
        c.cmd("QUIT")
        c.close()
        return reused, sess

    reused, first = connect()
    assert not reused
    assert connect(first)[0]                      # the current key
    conf.write_text(text + "data_timeout = 60\n")
    os.kill(gw.pid, signal.SIGHUP)
    assert gw.wait_log(r"event=reload result=ok", 5)
    assert connect(first)[0]                      # a new context, the same keys
    time.sleep(7)                                 # three rotations: the key that sealed it is gone
    assert not connect(first)[0]
