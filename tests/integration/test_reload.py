"""
Live reload on SIGHUP: the file (and the environment, and the same flags) is
read again; relay domains, the recipient map, the filter chain, limits,
timeouts, the downstream and the log level apply to sessions that begin
afterwards, while a session keeps the configuration it began with to its
end. Keys that need a restart are logged as not applied; a file that does
not load leaves everything as it was, logged and counted. No connection is
dropped and no message lost, under load.

The keys that change live in a --config file here: flags win over the file,
so they would hide a change (the gateway fixture's relay_domains flag is
left out with None).
"""
import os
import signal
import threading
import time
import urllib.request

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import HOST, Client, Closed, Gateway, free_port, make_message, new_msgid, transact


def conf_gateway(gateway, tmp_path, text, **opts):
    path = tmp_path / "mxgate.conf"
    path.write_text(text)
    o = dict(config=str(path), relay_domains=None)
    o.update(opts)
    gw = gateway(**o)
    gw.conf = path
    return gw


def reload(gw, text, result="ok", timeout=5.0):
    """Rewrite the file, SIGHUP, and wait for the reload's log line (the
    n-th one for the n-th reload)."""
    before = len(reload_lines(gw))
    gw.conf.write_text(text)
    os.kill(gw.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = reload_lines(gw)
        if len(lines) > before:
            assert lines[-1]["result"] == result, lines[-1]
            # the workers adopt it at their next loop turn (at most a tick,
            # 100 ms, on an idle worker)
            time.sleep(0.3)
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError("no reload line:\n" + gw.log_tail())


def reload_lines(gw):
    return [r for r in gw.log_records() if r.get("event") == "reload"]


def metric(port, name):
    with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, port), timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError("no metric " + name)


def rcpt_code(port, rcpt, mail_from="s@src.test"):
    with Client(port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % mail_from).code == 250
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        c.cmd("QUIT")
        return r


# ---------------------------------------------------------------- under load


def test_reload_under_load(sink, gateway, tmp_path):
    """Eight clients send in persistent sessions while relay_domains moves
    from a.test to b.test. Sessions begun before the reload keep a.test to
    their end; sessions begun after it are refused a.test and take b.test.
    No connection drops, every 250 is in the sink, nothing else is lost."""
    gw = conf_gateway(gateway, tmp_path, "relay_domains = a.test\n", downstream=sink.addr,
                      downstream_connections=16)
    stop = threading.Event()
    lock = threading.Lock()
    sessions = []       # dicts: start, end, domain, accepted msgids, error
    errors = []

    def client(n):
        deadline = time.monotonic() + 20            # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            rec = {"start": time.monotonic(), "end": None, "domain": None, "accepted": [], "first": None}
            try:
                with Client(gw.port) as c:
                    assert c.greet().code == 220
                    assert c.cmd("EHLO load%d.test" % n).code == 250
                    for k in range(12):
                        if rec["domain"] is None:
                            # which configuration the session began with
                            assert c.cmd("MAIL FROM:<s%d@src.test>" % n).code == 250
                            r = c.cmd("RCPT TO:<u%d@a.test>" % n)
                            rec["first"] = r.code
                            assert r.code in (250, 550), r
                            c.cmd("RSET")
                            rec["domain"] = "a.test" if r.code == 250 else "b.test"
                            if r.code == 550:
                                assert r.esc == "5.7.1", r
                        mid = new_msgid("load%d" % n)
                        res = transact(c, "s%d@src.test" % n, ["u%d@%s" % (n, rec["domain"])], make_message(mid))
                        assert res.delivered, res
                        rec["accepted"].append(mid)
                        time.sleep(0.1)
                    assert c.cmd("QUIT").code == 221
            except (AssertionError, Closed, OSError) as e:
                with lock:
                    errors.append("client %d: %r" % (n, e))
                return
            rec["end"] = time.monotonic()
            with lock:
                sessions.append(rec)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    hup = time.monotonic()
    line = reload(gw, "relay_domains = b.test\n")
    done = time.monotonic()
    assert line["changed"] == "relay_domains", line
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors

    spanning = [s for s in sessions if s["start"] < hup and s["end"] > done]
    assert spanning, "no session spanned the reload"
    for s in sessions:
        if s["start"] < hup:
            assert s["domain"] == "a.test", s           # began before: kept its configuration
        if s["start"] > done:
            assert s["first"] == 550 and s["domain"] == "b.test", s
    assert any(s["domain"] == "b.test" for s in sessions)
    accepted = [m for s in sessions for m in s["accepted"]]
    assert len(accepted) > 50
    assert sink.wait_for(lambda k: set(accepted) <= set(k.accepted_ids()), 15), "a 250 not in the sink"
    for r in gw.log_records():
        if r.get("event") == "disconnect":
            assert r["reason"] == "quit", r              # no session ended otherwise
    assert not [r for r in gw.log_records() if r.get("event") == "downstream_closed" and r.get("level") != "debug"]


# ---------------------------------------------------------------- what applies


def test_failed_reload_keeps_running_config_and_is_counted(sink, gateway, tmp_path):
    http = free_port()
    gw = conf_gateway(gateway, tmp_path, "relay_domains = a.test\n", downstream=sink.addr,
                      http_listen="%s:%d" % (HOST, http))
    ok0 = metric(http, 'mxgate_config_reloads_total{result="ok"}')
    bad = metric(http, 'mxgate_config_reloads_total{result="failed"}')
    line = reload(gw, "relay_domains = b.test\nmessage_size_limit = lots\n", result="failed")
    assert "message_size_limit" in line["error"] and "line 2" in line["error"], line
    assert metric(http, 'mxgate_config_reloads_total{result="failed"}') == bad + 1
    assert metric(http, 'mxgate_config_reloads_total{result="ok"}') == ok0
    assert rcpt_code(gw.port, "u@a.test").code == 250        # the running configuration stays
    assert rcpt_code(gw.port, "u@b.test").code == 550
    # a filter chain that does not build fails the reload the same way
    reload(gw, "relay_domains = b.test\nfilters = relay, nosuchfilter\n", result="failed")
    # a file that went missing too
    os.unlink(gw.conf)
    os.kill(gw.pid, signal.SIGHUP)
    assert gw.wait_log(r"event=reload result=failed .*error=\"[^\"]*mxgate.conf", 5), gw.log_tail()
    assert rcpt_code(gw.port, "u@a.test").code == 250
    assert metric(http, 'mxgate_config_reloads_total{result="failed"}') == bad + 3
    # and the next good file applies
    reload(gw, "relay_domains = b.test\n")
    assert rcpt_code(gw.port, "u@b.test").code == 250
    assert metric(http, 'mxgate_config_reloads_total{result="ok"}') == ok0 + 1


def test_recipient_map_is_read_again(sink, gateway, tmp_path):
    m = tmp_path / "recipients"
    m.write_text("alice@example.com\n")
    gw = conf_gateway(gateway, tmp_path, "relay_domains = example.com\nrecipient_map = %s\n" % m,
                      downstream=sink.addr)
    r = rcpt_code(gw.port, "bob@example.com")
    assert r.code == 550 and r.esc == "5.1.1", r
    m.write_text("alice@example.com\nbob@example.com\n")
    line = reload(gw, "relay_domains = example.com\nrecipient_map = %s\n" % m)
    assert line["changed"] == "-", line                  # the same keys; the file is read anyway
    assert rcpt_code(gw.port, "bob@example.com").code == 250
    # a map that went unreadable: the reload fails, bob stays known
    m.unlink()
    reload(gw, "relay_domains = example.com\nrecipient_map = %s\n" % m, result="failed")
    assert rcpt_code(gw.port, "bob@example.com").code == 250


def test_keys_that_need_a_restart_are_logged_and_kept(sink, tmp_path):
    """listen and workers come from the file here (flags would win over
    it), so the gateway is started by hand rather than by the fixture."""
    port, other = free_port(), free_port()
    path = tmp_path / "mxgate.conf"
    path.write_text("relay_domains = a.test\nlisten = %s:%d\nworkers = 2\n" % (HOST, port))
    gw = Gateway({"config": str(path), "downstream": sink.addr, "hostname": "mx.test", "user": "root"},
                 log_path=str(tmp_path / "restart.log"))
    gw.port = port
    gw.conf = path
    gw.start()
    try:
        line = reload(gw, "relay_domains = b.test\nlisten = %s:%d\nworkers = 5\ndata_timeout = 60\n"
                      % (HOST, other))
        assert line["not_applied"] == "listen,workers", line
        assert line["level"] == "warn" and line["note"] == "these keys need a restart", line
        assert line["changed"] == "relay_domains,data_timeout", line
        assert rcpt_code(port, "u@b.test").code == 250        # the old port, the new domains
        with pytest.raises(OSError):
            Client(other, timeout=1)
    finally:
        assert gw.stop() == 0, gw.log_tail()


def test_a_session_keeps_the_configuration_it_began_with(sink, gateway, tmp_path):
    gw = conf_gateway(gateway, tmp_path, "relay_domains = example.com\nmessage_size_limit = 100000\n",
                      downstream=sink.addr)
    old = Client(gw.port)
    old.greet()
    assert "SIZE 100000" in str(old.cmd("EHLO old.test"))
    reload(gw, "relay_domains = example.com\nmessage_size_limit = 2000\n")
    with Client(gw.port) as new:
        new.greet()
        assert "SIZE 2000" in str(new.cmd("EHLO new.test"))
        r = new.cmd("MAIL FROM:<s@src.test> SIZE=5000")
        assert r.code == 552 and r.esc == "5.3.4", r
    # the session opened before the reload still takes 5000 octets
    mid = new_msgid("kept")
    res = transact(old, "s@src.test", ["u@example.com"], make_message(mid, body=(b"x" * 98 + b"\r\n") * 50))
    assert res.delivered, res
    assert old.cmd("QUIT").code == 221
    old.close()
    assert sink.wait_message(mid)


def test_downstream_moves_and_idle_connections_retire(make_sink, gateway, tmp_path):
    one, two = make_sink(), make_sink()
    gw = conf_gateway(gateway, tmp_path, "relay_domains = example.com\ndownstream = %s\n" % one.addr,
                      workers=1)
    mid = new_msgid("one")
    with Client(gw.port) as c:
        c.ehlo()
        assert transact(c, "s@src.test", ["u@example.com"], make_message(mid)).delivered
    assert one.wait_message(mid)
    line = reload(gw, "relay_domains = example.com\ndownstream = %s\n" % two.addr)
    assert line["changed"] == "downstream", line
    # the idle connection to the old server is closed by the reload
    assert gw.wait_log(r"event=downstream_closed .*reason=reload", 5), gw.log_tail()
    mid = new_msgid("two")
    with Client(gw.port) as c:
        c.ehlo()
        assert transact(c, "s@src.test", ["u@example.com"], make_message(mid)).delivered
    assert two.wait_message(mid)
    assert not one.find(mid)
    # a switch between relaying and the Maildir needs a restart
    line = reload(gw, "relay_domains = example.com\n")
    assert line["not_applied"] == "downstream", line


def test_a_transaction_in_flight_finishes_on_its_connection(make_sink, gateway, tmp_path):
    """A reload that moves the downstream while a transaction is open: that
    transaction completes on the old server; the connection is retired when
    it is released, and the next message goes to the new server."""
    one, two = make_sink(), make_sink()
    gw = conf_gateway(gateway, tmp_path, "relay_domains = example.com\ndownstream = %s\n" % one.addr,
                      workers=1)
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@src.test>").code == 250
        assert c.cmd("RCPT TO:<u@example.com>").code == 250
        reload(gw, "relay_domains = example.com\ndownstream = %s\n" % two.addr)
        assert c.cmd("DATA").code == 354
        mid = new_msgid("inflight")
        c.send(make_message(mid) + b".\r\n")
        assert c.reply().code == 250
        assert one.wait_message(mid)
        mid2 = new_msgid("after")
        assert transact(c, "s@src.test", ["u@example.com"], make_message(mid2)).delivered
        assert two.wait_message(mid2)
    assert gw.wait_log(r"event=downstream_closed .*reason=reload", 5), gw.log_tail()


def test_log_level_applies(sink, gateway, tmp_path):
    gw = conf_gateway(gateway, tmp_path, "relay_domains = example.com\nlog_level = info\n", downstream=sink.addr,
                      log_level=None)
    rcpt_code(gw.port, "u@example.com")
    assert "event=connect " not in gw.log()
    reload(gw, "relay_domains = example.com\nlog_level = debug\n")
    rcpt_code(gw.port, "u@example.com")
    assert gw.wait_log(r"level=debug event=connect ", 5), gw.log_tail()


@pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")
def test_spf_put_in_the_chain_by_a_reload(sink, gateway, tmp_path):
    """The helper is started when SPF first appears in the chain."""
    zone = {"fail.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
            "pass.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]}
    with DnsServer(tmp_path / "dns", zone) as dns:
        base = "relay_domains = example.com\ndns_server = %s\ndns_timeout = 1\n" % dns.addr
        gw = conf_gateway(gateway, tmp_path, base + "filters = limits, relay, recipients\n", downstream=sink.addr)
        r = rcpt_code(gw.port, "u@example.com", mail_from="a@fail.test")
        assert r.code == 250, r                                    # no SPF yet
        assert "spf_helper_started" not in gw.log()
        reload(gw, base + "filters = limits, relay, recipients, spf\nspf_fail = reject\n")
        assert gw.wait_log("event=spf_helper_started", 5), gw.log_tail()
        time.sleep(0.3)                                            # the workers take its socket at a tick
        r = rcpt_code(gw.port, "u@example.com", mail_from="a@fail.test")
        assert r.code == 550 and r.esc == "5.7.23", r
        with Client(gw.port) as c:
            c.ehlo()
            mid = new_msgid("spfpass")
            assert transact(c, "a@pass.test", ["u@example.com"], make_message(mid)).delivered
        m = sink.wait_message(mid)
        assert b"Received-SPF: pass " in m.wire, m.wire[:400]
