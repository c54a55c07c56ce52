"""
The content stage (content_scanner = rspamd): every message is held whole
at mxgate, POSTed to a real rspamd (Debian's 3.4, rspamdserver.py) at the
final dot, and only a message that passes goes downstream, with rspamd's
headers on it; the client's reply to its final dot is rspamd's verdict or
the downstream's reply.

rspamd asks DNS only of the unbound these tests start (dnsserver.py), which
serves the client's names, SPF for the senders' domains, a DKIM key made
for this run (sel._domainkey.signer.test) and DMARC p=reject for
signer.test and strict.test. The test hook of rspamdserver.py
(X-Mxtest-Action) forces each of rspamd's actions.

test_rspamd_fixture_verdicts documents what rspamd itself answers for the
messages the other tests send (POSTed to /checkv2 from Python): those facts
are what mxgate's tests rely on.

One rspamd serves the module (~1 s to start with build/rspamd-db warm,
~3 s on a fresh checkout); a second one (`victim`) is killed and stopped by
the fault tests. A small fake (rspamdserver.FakeRspamd) plays an rspamd that
answers garbage, an error status, or nothing, and records what mxgate sent.
"""
import atexit
import base64
import email.utils
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import BINARY, HOST, Client, dot_stuff, free_port, parse_metrics, send_mail, transact
from rspamdserver import GTUBE, FakeRspamd, Rspamd, rspamd_available

SIGNER = "signer.test"      # DKIM-signs with the key made for the run; DMARC p=reject
STRICT = "strict.test"      # SPF -all, DMARC p=reject: a forged From is refused
RCPT = "user@example.com"
HOSTNAME = "mx.test"        # conftest's DEFAULTS: mxgate's authserv-id

AUTH_WORDS = {"pass", "fail", "temperror", "permerror", "none"}


def zone(pubkey_b64):
    return {
        # the client and its name both ways: hfilter finds nothing to score
        "client.test": [("A", "127.0.0.1")],
        "1.0.0.127.in-addr.arpa": [("PTR", "client.test")],
        "src.test": [("A", "127.0.0.1"), ("MX", "10 client.test"), ("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        SIGNER: [("A", "127.0.0.1"), ("MX", "10 client.test"), ("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        "sel._domainkey." + SIGNER: [("TXT", "v=DKIM1; k=rsa; p=" + pubkey_b64)],
        "_dmarc." + SIGNER: [("TXT", "v=DMARC1; p=reject")],
        STRICT: [("A", "127.0.0.1"), ("MX", "10 client.test"), ("TXT", "v=spf1 -all")],
        "_dmarc." + STRICT: [("TXT", "v=DMARC1; p=reject")],
    }


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
    """(private key PEM bytes, public key base64) of an RSA key made now."""
    d = tmp_path_factory.mktemp("dkim")
    key = d / "sel.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True,
                   capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True, timeout=30).stdout
    return key.read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def dns(tmp_path_factory, dkim_key):
    if not unbound_available():
        pytest.skip("unbound is not installed (make deps)")
    with DnsServer(tmp_path_factory.mktemp("dns"), zone(dkim_key[1])) as d:
        yield d


def _rspamd(tmp_path_factory, dns, name):
    if not rspamd_available():
        pytest.skip("rspamd is not installed (make deps installs Debian's rspamd)")
    return Rspamd(tmp_path_factory.mktemp(name), dns.addr)


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory, dns):
    """The module's rspamd: never stopped or paused by a test."""
    r = _rspamd(tmp_path_factory, dns, "rspamd")
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def _spare(tmp_path_factory, dns):
    r = _rspamd(tmp_path_factory, dns, "victim")
    yield r
    r.stop()


@pytest.fixture
def victim(_spare):
    """A second rspamd that a test may kill or pause: running and answering
    when the test starts (started on first use, started again after a kill,
    on the same port)."""
    if _spare.paused:
        _spare.resume()
    if not _spare.running:
        _spare.start()
    yield _spare
    if _spare.paused:
        _spare.resume()


@pytest.fixture
def signer(dkim_key):
    dkim = pytest.importorskip("dkim", reason="python3-dkim is not installed (make deps)")

    def sign(msg, domain=SIGNER):
        sig = dkim.sign(msg, b"sel", domain.encode(), dkim_key[0],
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig + msg
    return sign


@pytest.fixture
def fake():
    with FakeRspamd() as f:
        yield f


# ---------------------------------------------------------------- helpers

# Lines that begin with "." (stuffed on the wire, "..", and a line that is
# one dot): what the client writes, what rspamd must see and what the
# downstream must get.
DOTTED_BODY = (b"First line.\r\n"
               b".a line that begins with a dot\r\n"
               b"..and one with two\r\n"
               b".\r\n"
               b"(above: a line that is a single dot)\r\n"
               b"last line\r\n")


def new_sender(tag, domain="src.test"):
    """A unique envelope sender: the tx log line is found by it."""
    return "%s-%s@%s" % (tag, uuid.uuid4().hex[:10], domain)


def mail(sender, subject="hello", body="Hello, this is a short and clean message.\r\n", headers=()):
    """(message bytes, Message-ID): a plain message from sender, dated now."""
    mid = "<%s@client.test>" % uuid.uuid4().hex
    lines = ["From: Sender <%s>" % sender,
             "To: User <%s>" % RCPT,
             "Subject: %s" % subject,
             "Date: %s" % email.utils.formatdate(localtime=False),
             "Message-ID: %s" % mid]
    lines += list(headers)
    if isinstance(body, str):
        body = body.encode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, mid


_SPILL_DIRS = []
atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _SPILL_DIRS])


def content_gw(gateway, sink, url, **opts):
    # spool_dir: where held messages past content_memory_limit go (a fresh
    # directory, never the working directory's ./spool)
    spill = tempfile.mkdtemp(prefix="mxgate-spill.")
    _SPILL_DIRS.append(spill)
    o = dict(downstream=sink.addr, workers=1, content_scanner="rspamd", rspamd_url=url, rspamd_timeout=10,
             http_listen="%s:%d" % (HOST, free_port()), spool_dir=spill)
    o.update(opts)
    return gateway(**o)


def deliver(gw, sender, msg, rcpts=(RCPT,), mail_params="", timeout=20.0):
    """One session, one transaction (send_mail: the message dot-stuffed)."""
    return send_mail(gw.port, mail_from=sender, rcpts=rcpts, msg=msg, mail_params=mail_params, timeout=timeout)


def fields(data):
    """[(name, value)] of a message's header section in order; values
    unfolded, white space runs made one space."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return [(n, re.sub(r"\s+", " ", v)) for n, v in out]


def values(data, name):
    return [v for n, v in fields(data) if n.lower() == name.lower()]


def index_of(data, name):
    names = [n.lower() for n, _ in fields(data)]
    return names.index(name.lower()) if name.lower() in names else None


def body_of(data):
    return data.split(b"\r\n\r\n", 1)[1]


def data_commands(sink):
    with sink.cond:
        return sum(1 for _, line in sink.commands if line.strip().upper() == "DATA")


def tx_record(gw, sender, timeout=5.0):
    rec = gw.wait_record(lambda r: r.get("event") == "tx" and r.get("from") == sender, timeout=timeout)
    assert rec is not None, "no event=tx line for %s:\n%s" % (sender, gw.log_tail(20))
    return rec


def metrics(gw):
    with urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5) as r:
        return parse_metrics(r.read().decode())


def wait_metrics(gw, want, timeout=5.0):
    """Until every {series: value} in want is reached exactly; the last
    scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(gw)
        if all(m.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def scans(result):
    return 'mxgate_content_scans_total{result="%s"}' % result


def fallbacks(action):
    return 'mxgate_content_fallback_total{action="%s"}' % action


def errors(reason):
    return 'mxgate_content_errors_total{reason="%s"}' % reason


def auth(method, result):
    return 'mxgate_content_auth_total{method="%s",result="%s"}' % (method, result)


def assert_scanned_headers(m):
    """rspamd's headers on a delivered message, above mxgate's Received."""
    rcvd = index_of(m.data, "Received")
    assert rcvd is not None, m.data[:2000]
    for name in ("X-Spamd-Result", "Authentication-Results", "X-Spam-Status"):
        i = index_of(m.data, name)
        assert i is not None, "%s missing:\n%s" % (name, m.data[:3000].decode("utf-8", "replace"))
        assert i < rcvd, "%s below our Received:\n%s" % (name, m.data[:3000].decode("utf-8", "replace"))
    assert len(values(m.data, "X-Spamd-Result")) == 1, fields(m.data)


def assert_unscanned(m):
    for name in ("X-Spamd-Result", "X-Spam-Status", "X-Rspamd-Server", "X-Spamd-Bar"):
        assert index_of(m.data, name) is None, "%s on an unscanned message:\n%s" % (
            name, m.data[:2000].decode("utf-8", "replace"))


# ---------------------------------------------------------------- configuration


def _print_config(*flags):
    p = subprocess.run([BINARY, "--print-config"] + list(flags), capture_output=True, timeout=10)
    return p.returncode, p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def test_config_keys():
    rc, out = _print_config()
    assert rc == 0, out
    for line in ("content_scanner = none", "rspamd_timeout = 15", "content_fallback = tempfail",
                 "content_memory_limit = 134217728"):
        assert line in out.splitlines(), (line, out)
    on = ["--content-scanner", "rspamd", "--rspamd-url", "http://127.0.0.1:11333"]
    rc, out = _print_config(*on, "--rspamd-timeout", "600", "--content-fallback", "accept",
                            "--content-memory-limit", "1m")
    assert rc == 0, out
    for line in ("content_scanner = rspamd", "rspamd_timeout = 600", "content_fallback = accept",
                 "content_memory_limit = 1048576"):
        assert line in out.splitlines(), (line, out)
    for key, bad in (("rspamd-timeout", "0"), ("rspamd-timeout", "601"), ("rspamd-timeout", "1.5"),
                     ("content-fallback", "maybe"), ("content-scanner", "clamav"),
                     ("content-memory-limit", "lots")):
        rc, out = _print_config(*on, "--" + key, bad)
        assert rc != 0 and key in out, (key, bad, rc, out)
    rc, out = _print_config("--content-scanner", "rspamd", "--rspamd-url", "")
    assert rc != 0 and "rspamd_url" in out, out
    rc, out = _print_config("--content-scanner", "rspamd", "--rspamd-url", "https://127.0.0.1:11333")
    assert rc != 0 and "rspamd-url" in out and "http://" in out, out
    for mode in ("spool", "relay-then-spool"):
        rc, out = _print_config(*on, "--downstream", "127.0.0.1:25", "--delivery", mode)
        assert rc == 0 and "content_scanner = rspamd" in out.splitlines(), (mode, rc, out)


# ---------------------------------------------------------------- rspamd itself


def test_rspamd_fixture_verdicts(rspamd, signer):
    """What rspamd 3.4, as rspamdserver.py configures it, answers: the facts
    the tests below build on."""
    host = socket.gethostname()

    def check(msg, sender, **kw):
        v = rspamd.check(msg, mail_from=sender, queue_id="Q-%s" % uuid.uuid4().hex[:8],
                         extra_headers={"MTA-Name": HOSTNAME}, **kw)
        assert v["_elapsed"] < 1.0, "a scan must not wait on DNS timeouts: %.2f s" % v["_elapsed"]
        return v

    def ar(v):
        return re.sub(r"\s+", " ", v["milter"]["add_headers"]["Authentication-Results"]["value"])

    # a clean message from a sender whose SPF passes: no action
    s = new_sender("fx-clean")
    msg, _ = mail(s)
    v = check(msg, s)
    assert v["action"] == "no action" and v["score"] < 6, v
    assert "R_SPF_ALLOW" in v["symbols"] and "R_DKIM_NA" in v["symbols"] and "DMARC_NA" in v["symbols"], v
    add = v["milter"]["add_headers"]
    for name in ("X-Spamd-Result", "Authentication-Results", "X-Spam-Status", "X-Rspamd-Server", "X-Spamd-Bar",
                 "X-Rspamd-Queue-Id"):
        assert name in add, (name, add)
    assert add["X-Spamd-Result"]["value"].startswith("default: False [")
    assert add["X-Spam-Status"]["value"].startswith("No, score=")
    # MTA-Name is the authserv-id of rspamd's Authentication-Results (else its host name)
    # (its results in no fixed order)
    assert ar(v).startswith(HOSTNAME + "; "), ar(v)
    for part in ("dkim=none", "dmarc=none", "spf=pass (%s: domain of %s designates 127.0.0.1" % (HOSTNAME, s)):
        assert part in ar(v), (part, ar(v))
    assert host + ";" not in ar(v)
    # and rspamd asks to remove those fields wherever the message had them
    for name in ("X-Spamd-Result", "Authentication-Results", "X-Spam-Status", "X-Spam"):
        assert v["milter"]["remove_headers"].get(name) == 0, v["milter"]["remove_headers"]

    # GTUBE: reject with rspamd's own text, and nothing else looked at
    v = check(mail(s, body=GTUBE + b"\r\n")[0], s)
    assert v["action"] == "reject" and v["is_skipped"] is True, v
    assert v["messages"]["smtp_message"] == "Gtube pattern", v
    assert list(v["symbols"]) == ["GTUBE"], v

    # DKIM: signed by the run's key (published at sel._domainkey.signer.test)
    a = new_sender("fx-dkim", SIGNER)
    signed = signer(mail(a)[0])
    v = check(signed, a)
    assert v["action"] == "no action", v
    assert "R_DKIM_ALLOW" in v["symbols"] and "DMARC_POLICY_ALLOW" in v["symbols"], v
    assert "dkim=pass header.d=%s header.s=sel" % SIGNER in ar(v), ar(v)
    assert "dmarc=pass (policy=reject) header.from=%s" % SIGNER in ar(v), ar(v)
    # ... tampered after signing: the body hash fails (DMARC still passes on SPF)
    v = check(signed.replace(b"short and clean", b"short and dirty"), a)
    assert "R_DKIM_REJECT" in v["symbols"] and "R_DKIM_ALLOW" not in v["symbols"], v
    assert 'dkim=fail ("body hash did not verify")' in ar(v), ar(v)

    # dot-stuffing: a signature over lines that begin with "." verifies on
    # the message as written, and fails on the wire form (stuffed)
    dotted = signer(mail(a, body=DOTTED_BODY)[0])
    assert "R_DKIM_ALLOW" in check(dotted, a)["symbols"]
    assert "R_DKIM_REJECT" in check(dot_stuff(dotted), a)["symbols"]

    # DMARC: From strict.test, SPF -all, no signature, p=reject: reject,
    # forced by the dmarc module (no smtp_message of its own)
    b = new_sender("fx-dmarc", STRICT)
    v = check(mail(b)[0], b)
    assert v["action"] == "reject", v
    assert "DMARC_POLICY_REJECT" in v["symbols"] and "R_SPF_FAIL" in v["symbols"], v
    assert 'dmarc=fail reason="No valid SPF, No valid DKIM" header.from=%s (policy=reject)' % STRICT in ar(v), ar(v)
    assert "module=dmarc" in v["milter"]["add_headers"]["X-Rspamd-Pre-Result"]["value"], v
    assert not v.get("messages", {}).get("smtp_message"), v

    # the test hook: each action, with X-Mxtest-Message as smtp_message
    for action in ("reject", "soft reject", "greylist", "add header", "rewrite subject", "no action"):
        msg, _ = mail(s, subject="hook test", headers=["X-Mxtest-Action: " + action,
                                                        "X-Mxtest-Message: hook says " + action])
        v = check(msg, s)
        assert v["action"] == action, v
        assert v["messages"]["smtp_message"] == "hook says " + action, v
        if action == "rewrite subject":
            assert v["subject"] == "*** SPAM *** hook test", v
        else:
            assert "subject" not in v, v


# ---------------------------------------------------------------- verdicts


def test_gtube_refused_554_never_reaches_the_downstream(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("gtube")
    msg, mid = mail(s, body=b"Spam follows.\r\n" + GTUBE + b"\r\n")
    res = deliver(gw, s, msg)
    assert res.stage == "eod", res
    assert res.final.code == 554 and res.final.esc == "5.7.1", res
    assert "Gtube pattern" in res.final.text, res
    rec = tx_record(gw, s)
    assert rec["content"] == "reject", rec
    assert float(rec["content.score"]) == 15.0, rec
    assert "content.error" not in rec and "content.fallback" not in rec, rec
    # GTUBE stops rspamd before DKIM, DMARC and ARC are looked at: no results
    assert "dkim" not in rec and "dmarc" not in rec and "arc" not in rec, rec
    # the downstream saw at most MAIL/RCPT (then RSET): never DATA, never the message
    assert not sink.find(mid, accepted_only=False)
    assert data_commands(sink) == 0, sink.commands
    m = wait_metrics(gw, {scans("reject"): 1})
    assert m[scans("reject")] == 1 and m[scans("error")] == 0, m


def test_clean_message_delivered_with_rspamd_headers(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("clean")
    msg, mid = mail(s)
    res = deliver(gw, s, msg)
    assert res.delivered, res
    m = sink.wait_message(mid)
    assert m is not None
    assert_scanned_headers(m)
    # the message itself follows, untouched
    assert m.data.endswith(msg), m.data[-500:]
    rec = tx_record(gw, s)
    assert rec["content"] in ("no_action", "add_header"), rec
    assert 0 <= float(rec["content.score"]) < 15, rec
    # rspamd's DKIM, DMARC and ARC results, in RFC 8601's words
    assert rec["dkim"] == "none" and rec["dmarc"] == "none" and rec["arc"] == "none", rec
    assert "content.error" not in rec and "content.fallback" not in rec, rec
    # rspamd's log and ours meet: our transaction id is its queue id
    qid = values(m.data, "X-Rspamd-Queue-Id")
    assert qid == [rec["tx"]], (qid, rec)
    verdict = rec["content"]
    mt = wait_metrics(gw, {scans(verdict): 1, auth("dkim", "none"): 1, auth("dmarc", "none"): 1})
    assert mt[scans(verdict)] == 1, mt
    assert mt[auth("dkim", "none")] == 1 and mt[auth("dmarc", "none")] == 1 and mt[auth("arc", "none")] == 1, mt
    assert mt[auth("dkim", "pass")] == 0, mt
    assert mt[fallbacks("tempfail")] == 0 and mt[fallbacks("accept")] == 0, mt
    assert mt["mxgate_content_memory_full_total"] == 0, mt


def test_forged_scanner_headers_are_removed(sink, gateway, rspamd):
    # what the sender wrote in rspamd's own fields is gone (rspamd's
    # remove_headers); rspamd's are there once
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("fh")
    msg, mid = mail(s, headers=["X-Spam-Status: No, score=-100 (FORGED-VALUE)", "X-Spamd-Result: FORGED-VALUE",
                                "X-Spamd-Result: FORGED-VALUE again",
                                "Authentication-Results: %s; dkim=pass (FORGED-VALUE)" % HOSTNAME])
    assert deliver(gw, s, msg).delivered
    m = sink.wait_message(mid)
    assert_scanned_headers(m)
    assert b"FORGED-VALUE" not in m.data, m.data[:3000]
    assert len(values(m.data, "X-Spam-Status")) == 1
    assert len(values(m.data, "Authentication-Results")) == 1


def test_each_action_gets_its_reply(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    want = {
        "reject": (554, "5.7.1"),
        "soft reject": (451, "4.7.1"),
        "greylist": (451, "4.7.1"),
        "add header": (250, None),
        "rewrite subject": (250, None),
        "no action": (250, None),
    }
    delivered = 0
    for action, (code, esc) in want.items():
        s = new_sender("act-" + action.replace(" ", "-"))
        msg, mid = mail(s, subject="Original subject", headers=["X-Mxtest-Action: " + action,
                                                                 "X-Mxtest-Message: refused by the test hook"])
        res = deliver(gw, s, msg)
        assert res.stage == "eod" and res.final.code == code, (action, res)
        if esc:
            assert res.final.esc == esc, (action, res)
        if action == "reject":
            assert "refused by the test hook" in res.final.text, res
        rec = tx_record(gw, s)
        assert rec["content"] == action.replace(" ", "_"), (action, rec)
        if code != 250:
            assert not sink.find(mid, accepted_only=False), action
            continue
        delivered += 1
        m = sink.wait_message(mid)
        assert m is not None, action
        assert_scanned_headers(m)
        subjects = values(m.data, "Subject")
        if action == "rewrite subject":
            assert subjects == ["*** SPAM *** Original subject"], subjects
        else:
            assert subjects == ["Original subject"], (action, subjects)
        if action == "add header":
            assert values(m.data, "X-Spam-Status")[0].startswith("Yes"), fields(m.data)
    assert data_commands(sink) == delivered, sink.commands
    mt = wait_metrics(gw, {scans(a.replace(" ", "_")): 1 for a in want})
    for a in want:
        assert mt[scans(a.replace(" ", "_"))] == 1, (a, mt)


# ---------------------------------------------------------------- authentication


def test_dkim_signed_passes(sink, gateway, rspamd, signer):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("dkim", SIGNER)
    msg, mid = mail(s)
    signed = signer(msg)
    assert deliver(gw, s, signed).delivered
    m = sink.wait_message(mid)
    assert_scanned_headers(m)
    [ar] = values(m.data, "Authentication-Results")
    assert "dkim=pass header.d=%s header.s=sel" % SIGNER in ar, ar
    assert "dmarc=pass" in ar, ar
    assert m.data.endswith(signed)
    rec = tx_record(gw, s)
    assert rec["dkim"] == "pass" and rec["dmarc"] == "pass" and rec["arc"] == "none", rec
    mt = wait_metrics(gw, {auth("dkim", "pass"): 1, auth("dmarc", "pass"): 1})
    assert mt[auth("dkim", "pass")] == 1 and mt[auth("dmarc", "pass")] == 1, mt


def test_dkim_tampered_fails(sink, gateway, rspamd, signer):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("tampered", SIGNER)
    msg, mid = mail(s)
    tampered = signer(msg).replace(b"short and clean", b"short and dirty")
    assert deliver(gw, s, tampered).delivered      # a failed signature alone is no reason to refuse
    m = sink.wait_message(mid)
    [ar] = values(m.data, "Authentication-Results")
    assert "dkim=fail" in ar and "dkim=pass" not in ar, ar
    rec = tx_record(gw, s)
    assert rec["dkim"] == "fail", rec
    assert wait_metrics(gw, {auth("dkim", "fail"): 1})[auth("dkim", "fail")] == 1


def test_dmarc_reject_policy_refused(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("dmarc", STRICT)
    msg, mid = mail(s)
    res = deliver(gw, s, msg)
    assert res.final.code == 554 and res.final.esc == "5.7.1", res
    assert not sink.find(mid, accepted_only=False)
    assert data_commands(sink) == 0
    rec = tx_record(gw, s)
    assert rec["content"] == "reject" and rec["dmarc"] == "fail", rec
    assert rec["dmarc.policy"] == "reject", rec
    assert rec["dkim"] == "none", rec
    mt = wait_metrics(gw, {auth("dmarc", "fail"): 1, scans("reject"): 1})
    assert mt[auth("dmarc", "fail")] == 1 and mt[scans("reject")] == 1, mt


def test_one_authentication_results_with_our_spf(sink, gateway, rspamd, signer, dns):
    # mxgate's SPF filter on: its spf= and rspamd's dkim=/dmarc= in one
    # field under mxgate's authserv-id
    gw = content_gw(gateway, sink, rspamd.url, filters="limits, relay, recipients, size, spf",
                    dns_server=dns.addr, dns_timeout=1, spf_timeout=10)
    s = new_sender("merged", SIGNER)
    msg, mid = mail(s)
    assert deliver(gw, s, signer(msg)).delivered
    m = sink.wait_message(mid)
    ars = values(m.data, "Authentication-Results")
    assert len(ars) == 1, fields(m.data)
    ar = ars[0]
    assert ar.startswith(HOSTNAME + ";"), ar
    assert ar.count("spf=") == 1 and "spf=pass smtp.mailfrom=%s" % s in ar, ar
    assert "domain of" not in ar, "rspamd's spf= is left out: %s" % ar
    assert "dkim=pass header.d=%s" % SIGNER in ar and "dmarc=pass" in ar, ar
    assert index_of(m.data, "Authentication-Results") < index_of(m.data, "Received"), fields(m.data)
    assert values(m.data, "Received-SPF")[0].startswith("pass"), fields(m.data)
    assert len(values(m.data, "X-Spamd-Result")) == 1
    rec = tx_record(gw, s)
    assert rec["spf"] == "pass" and rec["dkim"] == "pass" and rec["dmarc"] == "pass", rec


# ---------------------------------------------------------------- the wire


def test_dot_stuffed_lines_reach_both_intact(sink, gateway, rspamd, signer):
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("dots", SIGNER)
    msg, mid = mail(s, body=DOTTED_BODY)
    signed = signer(msg)
    res = deliver(gw, s, signed)          # send_mail dot-stuffs it
    assert res.delivered, res
    m = sink.wait_message(mid)
    assert body_of(m.data) == DOTTED_BODY, body_of(m.data)
    assert m.wire.endswith(dot_stuff(signed)), m.wire[-300:]
    # rspamd saw the lines unstuffed: the signature verified
    [ar] = values(m.data, "Authentication-Results")
    assert "dkim=pass" in ar, ar
    assert tx_record(gw, s)["dkim"] == "pass"


def test_pipelined_transactions(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    s1, s2 = new_sender("pipe1"), new_sender("pipe2")
    m1, id1 = mail(s1)
    m2, id2 = mail(s2, body=b"Second message.\r\n")
    with Client(gw.port) as c:
        assert c.greet().code == 220
        assert "PIPELINING" in c.ehlo().text.upper()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (s1, RCPT))
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        # the first message's end and the whole next command group in one write
        c.send(dot_stuff(m1) + b".\r\n" + ("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (s2, RCPT)).encode())
        got = [c.reply(timeout=15) for _ in range(4)]
        assert [r.code for r in got] == [250, 250, 250, 354], got
        c.send(dot_stuff(m2) + b".\r\nQUIT\r\n")
        assert c.reply(timeout=15).code == 250
        assert c.reply().code == 221
    a, b = sink.wait_message(id1), sink.wait_message(id2)
    assert a is not None and b is not None
    assert_scanned_headers(a)
    assert_scanned_headers(b)
    assert sink.accepted_ids() == [id1, id2]


def test_reject_then_clean_in_one_session(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url)
    s1, s2 = new_sender("first"), new_sender("second")
    bad, bad_id = mail(s1, body=GTUBE + b"\r\n")
    good, good_id = mail(s2)
    with Client(gw.port) as c:
        c.ehlo()
        r1 = transact(c, s1, [RCPT], bad)
        r2 = transact(c, s2, [RCPT], good)
        c.cmd("QUIT")
    assert r1.stage == "eod" and r1.final.code == 554 and r1.final.esc == "5.7.1", r1
    assert r2.delivered, r2
    assert sink.wait_message(good_id) is not None
    assert not sink.find(bad_id, accepted_only=False)
    assert data_commands(sink) == 1, sink.commands
    assert tx_record(gw, s1)["content"] == "reject"
    assert tx_record(gw, s2)["content"] in ("no_action", "add_header")


def test_request_carries_the_envelope_and_the_plain_message(sink, gateway, fake):
    # what rspamd is sent, seen by a fake: the envelope in its protocol
    # headers, the message unstuffed
    gw = content_gw(gateway, sink, fake.url)
    s = new_sender("env")
    msg, mid = mail(s, body=DOTTED_BODY)
    res = deliver(gw, s, msg, rcpts=(RCPT, "other@example.net"))
    assert res.delivered, res
    assert fake.wait_requests(1)
    method, path, hdrs, body = fake.requests[0]
    assert (method, path) == ("POST", "/checkv2")
    h = {}
    for k, v in hdrs:
        h.setdefault(k.lower(), []).append(v)
    assert h["from"] == [s] and h["ip"] == ["127.0.0.1"] and h["helo"] == ["client.test"], h
    assert sorted(h["rcpt"]) == sorted([RCPT, "other@example.net"]), h
    assert h["mta-name"] == [HOSTNAME], h
    assert int(h["content-length"][0]) == len(body)
    assert body.endswith(msg), body[-400:]
    rec = tx_record(gw, s)
    assert h["queue-id"] == [rec["tx"]], (h, rec)
    assert rec["content"] == "no_action" and float(rec["content.score"]) == 0.5, rec
    m = sink.wait_message(mid)
    assert body_of(m.data) == DOTTED_BODY


# ---------------------------------------------------------------- faults


def test_unreachable_rspamd_tempfails_or_accepts(sink, gateway):
    url = "http://%s:%d" % (HOST, free_port())        # nothing listens: refused
    gw = content_gw(gateway, sink, url)
    s = new_sender("refused")
    msg, mid = mail(s)
    res = deliver(gw, s, msg)
    assert res.stage == "eod" and res.final.code == 451 and res.final.esc == "4.3.0", res
    assert not sink.find(mid, accepted_only=False) and data_commands(sink) == 0
    rec = tx_record(gw, s)
    assert rec["content"] == "error" and rec["content.error"] == "connect", rec
    assert rec["content.fallback"] == "tempfail", rec
    assert "content.score" not in rec and "dkim" not in rec, rec
    mt = wait_metrics(gw, {scans("error"): 1, fallbacks("tempfail"): 1, errors("connect"): 1})
    assert mt[scans("error")] == 1 and mt[fallbacks("tempfail")] == 1 and mt[errors("connect")] == 1, mt

    gw2 = content_gw(gateway, sink, url, content_fallback="accept")
    s = new_sender("refused-accept")
    msg, mid = mail(s)
    assert deliver(gw2, s, msg).delivered
    m = sink.wait_message(mid)
    assert_unscanned(m)
    assert m.data.endswith(msg)
    rec = tx_record(gw2, s)
    assert rec["content"] == "error" and rec["content.error"] == "connect", rec
    assert rec["content.fallback"] == "accept", rec
    mt = wait_metrics(gw2, {fallbacks("accept"): 1})
    assert mt[fallbacks("accept")] == 1 and mt[fallbacks("tempfail")] == 0, mt


def test_garbage_answers_are_failures(sink, gateway, fake):
    gw = content_gw(gateway, sink, fake.url)
    for mode, reason in (("garbage", "response"), ("badjson", "response"), ("error500", "http"),
                         ("close", "io")):
        fake.mode = mode
        s = new_sender("fake-" + mode)
        msg, mid = mail(s)
        res = deliver(gw, s, msg)
        assert res.stage == "eod" and (res.final.code, res.final.esc) == (451, "4.3.0"), (mode, res)
        assert not sink.find(mid, accepted_only=False), mode
        rec = tx_record(gw, s)
        assert rec["content"] == "error" and rec["content.error"] == reason, (mode, rec)
        assert rec["content.fallback"] == "tempfail", rec
    assert data_commands(sink) == 0
    mt = wait_metrics(gw, {errors("response"): 2, errors("http"): 1, errors("io"): 1})
    assert mt[errors("response")] == 2 and mt[errors("http")] == 1 and mt[errors("io")] == 1, mt
    assert mt[fallbacks("tempfail")] == 4, mt
    # and with accept, the same garbage lets the message through unscanned
    gw2 = content_gw(gateway, sink, fake.url, content_fallback="accept")
    fake.mode = "garbage"
    s = new_sender("fake-accept")
    msg, mid = mail(s)
    assert deliver(gw2, s, msg).delivered
    assert_unscanned(sink.wait_message(mid))


def test_stopped_rspamd_times_out_while_others_are_served(sink, gateway, victim):
    gw = content_gw(gateway, sink, victim.url, rspamd_timeout=2, workers=1)
    s = new_sender("stopped")
    msg, mid = mail(s)
    victim.pause()
    try:
        with Client(gw.port) as c:
            c.ehlo()
            assert c.cmd("MAIL FROM:<%s>" % s).code == 250
            assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
            assert c.cmd("DATA").code == 354
            c.send(dot_stuff(msg) + b".\r\n")
            t0 = time.monotonic()
            # meanwhile another session on the same (only) worker is served at once
            steps = []
            with Client(gw.port) as o:
                for what, fn in (("greeting", lambda: o.greet(timeout=1.5)),
                                 ("EHLO", lambda: o.cmd("EHLO other.test", timeout=1.5)),
                                 ("MAIL", lambda: o.cmd("MAIL FROM:<%s>" % new_sender("other"), timeout=1.5)),
                                 ("RCPT", lambda: o.cmd("RCPT TO:<%s>" % RCPT, timeout=1.5)),
                                 ("RSET", lambda: o.cmd("RSET", timeout=1.5))):
                    t = time.monotonic()
                    r = fn()
                    steps.append((what, r.code, round(time.monotonic() - t, 3)))
                    assert r.code in (220, 250), steps
                    assert time.monotonic() - t < 0.75, steps
            # all of it while the first message still waits for rspamd
            assert time.monotonic() - t0 < 1.5, steps
            r = c.reply(timeout=8)
            took = time.monotonic() - t0
        assert (r.code, r.esc) == (451, "4.3.0"), r
        assert 1.5 <= took <= 4.5, "rspamd_timeout is 2 s; the fallback came after %.2f s" % took
    finally:
        victim.resume()
    assert not sink.find(mid, accepted_only=False)
    rec = tx_record(gw, s)
    assert rec["content"] == "error" and rec["content.error"] == "timeout", rec
    assert rec["content.fallback"] == "tempfail", rec
    assert wait_metrics(gw, {errors("timeout"): 1})[errors("timeout")] == 1
    # rspamd running again: scanned as before
    s = new_sender("resumed")
    msg, mid = mail(s)
    res = deliver(gw, s, msg)
    assert res.delivered, res
    assert_scanned_headers(sink.wait_message(mid))


def test_rspamd_killed_mid_test(sink, gateway, victim):
    gw = content_gw(gateway, sink, victim.url)
    s = new_sender("before-kill")
    msg, mid = mail(s)
    assert deliver(gw, s, msg).delivered
    assert_scanned_headers(sink.wait_message(mid))

    victim.kill()
    s = new_sender("after-kill")
    msg, mid = mail(s)
    res = deliver(gw, s, msg)
    assert (res.final.code, res.final.esc) == (451, "4.3.0"), res
    assert not sink.find(mid, accepted_only=False)
    assert data_commands(sink) == 1
    rec = tx_record(gw, s)
    assert rec["content"] == "error" and rec["content.error"] == "connect", rec
    assert rec["content.fallback"] == "tempfail", rec

    # another gateway, content_fallback = accept: delivered unscanned
    gw2 = content_gw(gateway, sink, victim.url, content_fallback="accept")
    s = new_sender("accept-kill")
    msg, mid = mail(s)
    assert deliver(gw2, s, msg).delivered
    m = sink.wait_message(mid)
    assert_unscanned(m)
    assert m.data.endswith(msg)
    assert tx_record(gw2, s)["content.fallback"] == "accept"

    # rspamd back on its port: the first gateway scans again
    victim.start()
    s = new_sender("after-restart")
    msg, mid = mail(s)
    assert deliver(gw, s, msg).delivered
    assert_scanned_headers(sink.wait_message(mid))
    assert tx_record(gw, s)["content"] in ("no_action", "add_header")


def test_rspamd_killed_while_scanning(sink, gateway, victim):
    # the request is in rspamd's queue when it dies: the connection is
    # reset, and the fallback comes at once, not after rspamd_timeout
    gw = content_gw(gateway, sink, victim.url, rspamd_timeout=30)
    s = new_sender("mid-scan")
    msg, mid = mail(s)
    victim.pause()
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % s).code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd("DATA").code == 354
        c.send(dot_stuff(msg) + b".\r\n")
        early = c.recv_quiet(0.5)
        assert not early, "answered while rspamd is stopped: %r" % early
        t0 = time.monotonic()
        victim.kill()
        r = c.reply(timeout=10)
        took = time.monotonic() - t0
    assert (r.code, r.esc) == (451, "4.3.0"), r
    assert took < 5, took
    rec = tx_record(gw, s)
    assert rec["content"] == "error" and rec["content.error"] == "io", rec
    assert not sink.find(mid, accepted_only=False)


# ---------------------------------------------------------------- memory


def test_memory_budget(sink, gateway, rspamd):
    gw = content_gw(gateway, sink, rspamd.url, content_memory_limit="1m", content_spill_limit=0)
    # over the budget: 452 4.3.1 at the final dot, nothing downstream
    s = new_sender("big")
    big, big_id = mail(s, body=(b"x" * 76 + b"\r\n") * (2 * 1024 * 1024 // 78))
    res = deliver(gw, s, big, timeout=30)
    assert res.stage == "eod" and (res.final.code, res.final.esc) == (452, "4.3.1"), res
    assert not sink.find(big_id, accepted_only=False) and data_commands(sink) == 0
    mt = metrics(gw)
    assert mt["mxgate_content_memory_full_total"] >= 1, mt
    full = mt["mxgate_content_memory_full_total"]
    # announced too large: refused at MAIL
    s = new_sender("size")
    msg, _ = mail(s)
    res = deliver(gw, s, msg, mail_params="SIZE=%d" % (2 * 1024 * 1024))
    assert res.stage == "mail" and (res.final.code, res.final.esc) == (452, "4.3.1"), res
    assert metrics(gw)["mxgate_content_memory_full_total"] == full + 1
    # within it: scanned and delivered, and nothing held afterwards
    s = new_sender("fits")
    ok, ok_id = mail(s, body=(b"y" * 76 + b"\r\n") * (200 * 1024 // 78))
    res = deliver(gw, s, ok, mail_params="SIZE=%d" % len(ok))
    assert res.delivered, res
    m = sink.wait_message(ok_id)
    assert_scanned_headers(m)
    assert m.data.endswith(ok)
    assert wait_metrics(gw, {"mxgate_content_held_bytes": 0})["mxgate_content_held_bytes"] == 0


# ---------------------------------------------------------------- with the spool


def test_spool_mode_scans_before_the_250(sink, gateway, rspamd, tmp_path):
    """delivery = spool: the 250 comes once the scanned message, with rspamd's
    headers in its record, is durable; a refused one never enters the spool."""
    gw = content_gw(gateway, sink, rspamd.url, delivery="spool", spool_dir=str(tmp_path / "spool"))
    s = new_sender("spool-gtube")
    msg, mid = mail(s, body=b"Spam follows.\r\n" + GTUBE + b"\r\n")
    res = deliver(gw, s, msg)
    assert res.final.code == 554 and res.final.esc == "5.7.1", res
    assert tx_record(gw, s)["content"] == "reject"
    s2 = new_sender("spool-clean")
    msg2, mid2 = mail(s2, body=b"line one\r\n.a line with a leading dot\r\nlast\r\n")
    res = deliver(gw, s2, msg2)
    assert res.delivered and "queued as" in res.final.text, res
    rec = tx_record(gw, s2)
    assert rec["content"] in ("no_action", "add_header"), rec
    m = sink.wait_message(mid2, timeout=15)
    assert m is not None, "the spooled message was never delivered:\n%s" % gw.log_tail(20)
    assert_scanned_headers(m)
    assert m.data.endswith(msg2), m.data[-300:]
    assert values(m.data, "X-Rspamd-Queue-Id") == [rec["tx"]]
    assert not sink.find(mid, accepted_only=False)
    mt = wait_metrics(gw, {"mxgate_content_held_bytes": 0})
    assert mt["mxgate_content_held_bytes"] == 0, mt


def test_relay_then_spool_scanned_message_spooled_when_the_downstream_is_down(sink, gateway, rspamd, tmp_path):
    """relay-then-spool with the downstream unreachable: scanned, then spooled
    with rspamd's headers (the spool's 250); GTUBE still gets 554."""
    dead = "%s:%d" % (HOST, free_port())
    gw = content_gw(gateway, sink, rspamd.url, downstream=dead, delivery="relay-then-spool",
                    spool_dir=str(tmp_path / "spool"), retry_max_interval=600)
    s = new_sender("rts-gtube")
    msg, _ = mail(s, body=b"Spam follows.\r\n" + GTUBE + b"\r\n")
    res = deliver(gw, s, msg)
    assert res.final.code == 554 and res.final.esc == "5.7.1", res
    s2 = new_sender("rts-clean")
    msg2, _ = mail(s2)
    res = deliver(gw, s2, msg2)
    assert res.delivered and "queued as" in res.final.text, res
    rec = tx_record(gw, s2)
    assert rec["content"] in ("no_action", "add_header") and rec.get("fallback") == "spool", rec
    # the record holds the scanned message: rspamd's headers above ours
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").iterdir() if p.name.startswith("w"))
    at = spooled.find(msg2)
    assert at > 0, "the message is not in the spool"
    head = spooled[max(0, at - 8192):at]
    assert b"X-Spamd-Result:" in head and head.rfind(b"X-Spamd-Result:") < head.rfind(b"Received: from"), head[-3000:]


# ---------------------------------------------------------------- the downstream failing after a pass


def _fault(sink, fault):
    if fault == "close_at_data":
        sink.fail_at = {"DATA": "close"}
    elif fault == "drop_mid_body":
        sink.drop_after_data_bytes = 1000
    elif fault == "close_at_eod":
        sink.drop_at_eod = True
    elif fault == "451_at_eod":
        sink.data_reply = "451 4.3.0 downstream busy"


@pytest.mark.parametrize("fault", ["close_at_data", "drop_mid_body", "close_at_eod", "451_at_eod"])
def test_downstream_fails_after_the_scan(sink, gateway, rspamd, tmp_path, fault):
    """The message passed rspamd; then the downstream fails at DATA, in the
    middle of the pushed message, or at its end. delivery = relay: the
    client gets a 4xx (never a 250 the downstream did not give);
    relay-then-spool: the scanned message is spooled with rspamd's headers
    and the client gets the spool's 250."""
    # ~480 KiB: more than the 128 KiB the pool queues for a connection, so
    # the message is pushed in pieces as the downstream drains
    body = b"".join(b"line %05d of a message long enough to be pushed in pieces\r\n" % i for i in range(8000))
    _fault(sink, fault)
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("ds-" + fault)
    msg, mid = mail(s, body=body)
    res = deliver(gw, s, msg)
    assert res.stage == "eod" and 400 <= res.final.code < 500, res
    rec = tx_record(gw, s)
    assert rec["content"] in ("no_action", "add_header"), rec
    assert not sink.find(mid), "a message the client was refused is in the downstream"

    spool = tmp_path / "spool"
    gw2 = content_gw(gateway, sink, rspamd.url, delivery="relay-then-spool", spool_dir=str(spool),
                     retry_max_interval=600)
    s2 = new_sender("rts-" + fault)
    msg2, _ = mail(s2, body=body)
    res = deliver(gw2, s2, msg2)
    assert res.delivered and "queued as" in res.final.text, res
    rec = tx_record(gw2, s2)
    assert rec["content"] in ("no_action", "add_header") and rec.get("fallback") == "spool", rec
    spooled = b"".join(p.read_bytes() for p in spool.iterdir() if p.name.startswith("w"))
    at = spooled.find(dot_stuff(msg2)[:200])
    assert at > 0, "the scanned message is not in the spool"
    assert b"X-Spamd-Result:" in spooled[max(0, at - 8192):at], spooled[max(0, at - 3000):at]


def test_spill_past_the_memory_budget(sink, gateway, rspamd):
    """Past content_memory_limit a held message goes to an unlinked file under
    spool_dir (content_spill_limit): scanned and delivered all the same,
    edits included; past both budgets 452 4.3.1."""
    gw = content_gw(gateway, sink, rspamd.url, content_memory_limit="1m", content_spill_limit="3m")
    spill = gw.opts["spool_dir"]
    s = new_sender("spill")
    body = b"".join(b".line %06d, some with a leading dot to unstuff\r\n" % i if i % 7 == 0 else
                    b"line %06d of a message larger than the memory budget\r\n" % i for i in range(40000))
    big, big_id = mail(s, body=body, headers=("X-Spam-Status: Yes, forged by the sender",))
    res = deliver(gw, s, big, timeout=60)
    assert res.delivered, res
    m = sink.wait_message(big_id, timeout=20)
    assert m is not None
    assert_scanned_headers(m)
    assert values(m.data, "X-Spam-Status") and "forged" not in " ".join(values(m.data, "X-Spam-Status")), fields(m.data)
    assert m.data.endswith(body), m.data[-300:]
    rec = tx_record(gw, s)
    assert rec["content"] in ("no_action", "add_header"), rec
    mt = wait_metrics(gw, {"mxgate_content_spilled_bytes": 0, "mxgate_content_held_bytes": 0})
    assert mt["mxgate_content_spills_total"] == 1, mt
    assert mt["mxgate_content_spilled_bytes"] == 0 and mt["mxgate_content_held_bytes"] == 0, mt
    assert os.listdir(spill) == [], os.listdir(spill)   # the file was never visible
    # announced larger than both budgets: refused at MAIL; sent without SIZE: at the final dot
    s = new_sender("spill-size")
    msg, _ = mail(s)
    res = deliver(gw, s, msg, mail_params="SIZE=%d" % (5 * 1024 * 1024))
    assert res.stage == "mail" and (res.final.code, res.final.esc) == (452, "4.3.1"), res
    s = new_sender("spill-full")
    huge, huge_id = mail(s, body=(b"z" * 76 + b"\r\n") * (5 * 1024 * 1024 // 78))
    res = deliver(gw, s, huge, timeout=60)
    assert res.stage == "eod" and (res.final.code, res.final.esc) == (452, "4.3.1"), res
    assert not sink.find(huge_id, accepted_only=False)
    mt = wait_metrics(gw, {"mxgate_content_spilled_bytes": 0})
    assert mt["mxgate_content_spilled_bytes"] == 0 and mt["mxgate_content_memory_full_total"] == 2, mt


# ---------------------------------------------------------------- more steps where the scanner fails


@pytest.mark.parametrize("mode,reason", [("unread", "timeout"), ("reset", "io")])
def test_scanner_fails_while_the_message_is_being_sent(sink, gateway, mode, reason):
    """A 3 MB message: rspamd that never reads it (the send stays in the
    kernel until the deadline cancels it) or resets the connection in the
    middle of it. The fallback answers; nothing reaches the downstream, and
    the buffer the ring was sending is given back only after the send ended
    (the ASan build poisons it while lent)."""
    with FakeRspamd(mode) as fk:
        gw = content_gw(gateway, sink, fk.url, rspamd_timeout=2)
        s = new_sender("send-" + mode)
        msg, mid = mail(s, body=(b"w" * 76 + b"\r\n") * (3 * 1024 * 1024 // 78))
        t0 = time.monotonic()
        res = deliver(gw, s, msg, timeout=30)
        assert res.stage == "eod" and (res.final.code, res.final.esc) == (451, "4.3.0"), res
        assert time.monotonic() - t0 < 15
        rec = tx_record(gw, s)
        assert rec["content"] == "error" and rec["content.error"] == reason, rec
        assert not sink.find(mid, accepted_only=False) and data_commands(sink) == 0
        mt = wait_metrics(gw, {errors(reason): 1, "mxgate_content_held_bytes": 0})
        assert mt[errors(reason)] == 1 and mt["mxgate_content_held_bytes"] == 0, mt


def test_many_forged_fields_all_removed(sink, gateway, rspamd):
    """rspamd removes every X-Spam-Status; a sender that repeats it 300
    times (more than the cuts kept on the stack) loses all 300."""
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("forged-many")
    forged = tuple("X-Spam-Status: No, forged %d" % i for i in range(300))
    msg, mid = mail(s, headers=forged)
    res = deliver(gw, s, msg)
    assert res.delivered, res
    m = sink.wait_message(mid)
    got = values(m.data, "X-Spam-Status")
    assert len(got) == 1 and "forged" not in got[0], got[:5]
    assert body_of(m.data) == body_of(msg)


def test_downstream_gone_while_the_body_arrives(gateway, make_sink):
    """The downstream took MAIL and RCPT, then went away while the client
    was still sending the body to be held: the final dot gets 451 4.4.1 and
    rspamd is never asked."""
    sink = make_sink()
    with FakeRspamd() as fk:
        gw = content_gw(gateway, sink, fk.url)
        with Client(gw.port) as c:
            c.greet()
            c.cmd("EHLO client.test")
            assert c.cmd("MAIL FROM:<gone@src.test>").code == 250
            assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
            assert c.cmd("DATA").code == 354
            c.send("Subject: x\r\n\r\nfirst half\r\n")
            sink.stop()            # closes its connections
            time.sleep(0.5)        # the pool sees the close
            c.send("second half\r\n.\r\n")
            r = c.reply()
            assert (r.code, r.esc) == (451, "4.4.1"), r
        assert fk.requests == []


def test_reply_stream_byte_for_byte(sink, gateway, rspamd):
    """A pipelined session through the content stage, the client's whole
    reply stream compared with what it must be, byte for byte: a rejected
    message, then a clean one, then QUIT."""
    gw = content_gw(gateway, sink, rspamd.url)
    s = new_sender("bytes")
    spam, _ = mail(s, body=b"Spam follows.\r\n" + GTUBE + b"\r\n")
    clean, _ = mail(s)
    sock = socket.create_connection((HOST, gw.port), timeout=20)
    try:
        f = sock.makefile("rb")
        greeting = f.readline()
        sock.sendall(b"EHLO client.test\r\n")
        ehlo = []
        while True:
            line = f.readline()
            ehlo.append(line)
            if line[3:4] == b" ":
                break
        env = ("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (s, RCPT)).encode()
        sock.sendall(env)
        got = [f.readline() for _ in range(3)]
        sock.sendall(dot_stuff(spam) + b".\r\n" + env)
        got += [f.readline() for _ in range(4)]
        sock.sendall(dot_stuff(clean) + b".\r\nQUIT\r\n")
        rest = f.read()
    finally:
        sock.close()
    assert greeting.startswith(b"220 mx.test "), greeting
    assert ehlo[0] == b"250-mx.test\r\n", ehlo
    # MAIL and RCPT: the downstream's own replies; DATA: ours; the dot: rspamd's verdict
    want = (b"250 2.1.0 ok\r\n" b"250 2.1.5 ok\r\n" b"354 End data with <CR><LF>.<CR><LF>\r\n"
            b"554 5.7.1 Gtube pattern\r\n"
            b"250 2.1.0 ok\r\n" b"250 2.1.5 ok\r\n" b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert b"".join(got) == want, b"".join(got)
    assert rest == b"250 2.0.0 ok queued\r\n221 2.0.0 Bye\r\n", rest   # the downstream's 250
