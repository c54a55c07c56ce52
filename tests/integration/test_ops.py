"""
The operations endpoint (http_listen): /metrics in the Prometheus text
format (checked by promtool), counters that match what a test did,
/healthz, /readyz (the downstream's reachability, draining), and the order
a balancer needs on SIGTERM: readiness off first, listeners open for
drain_delay, then the drain.
"""
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from mxtest import HOST, Client, free_port, make_message, new_msgid, parse_metrics, send_mail

PROMTOOL = shutil.which("promtool")


def ops_gateway(gateway, sink=None, **opts):
    port = free_port()
    o = dict(http_listen="%s:%d" % (HOST, port))
    if sink is not None:
        o["downstream"] = sink.addr
    o.update(opts)
    gw = gateway(**o)
    gw.http = "http://%s:%d" % (HOST, port)
    return gw


def get(gw, path, timeout=5.0):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(gw.http + path, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_status(gw, path, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = get(gw, path)
        if last[0] == status:
            return True
        time.sleep(0.1)
    return last


def metrics(gw):
    """{'name{labels}': value} of one scrape."""
    status, text = get(gw, "/metrics")
    assert status == 200, text
    return parse_metrics(text)


def test_metrics_pass_promtool(sink, gateway):
    if not PROMTOOL:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    gw = ops_gateway(gateway, sink)
    assert send_mail(gw.port).delivered
    status, text = get(gw, "/metrics")
    assert status == 200
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    assert "mxgate_relay_latency_seconds_bucket" in text
    assert 'mxgate_session_duration_seconds_bucket{le="+Inf"}' in text


def test_counters_match_what_was_done(sink, gateway):
    """Send N messages, have the sink refuse M, refuse K recipients by
    relay: the deltas of the counters say exactly that."""
    gw = ops_gateway(gateway, sink, workers=2)
    n, m, k = 7, 3, 4
    before = metrics(gw)
    for _ in range(n):
        assert send_mail(gw.port).delivered
    sink.data_reply = "554 5.7.1 no thanks"
    for _ in range(m):
        assert send_mail(gw.port).code == 554
    sink.data_reply = None
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@src.test>").code == 250
        for i in range(k):
            assert c.cmd("RCPT TO:<u%d@elsewhere.test>" % i).code == 550
        assert c.cmd("RSET").code == 250
        assert c.cmd("QUIT").code == 221
    sessions = n + m + 1
    deadline = time.monotonic() + 5
    while True:  # the last session's close is counted when the worker sees it
        after = metrics(gw)
        if after["mxgate_connections_open"] == before["mxgate_connections_open"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta('mxgate_messages_total{outcome="accepted"}') == n
    assert delta('mxgate_messages_total{outcome="refused"}') == m
    assert delta('mxgate_transactions_total{end="data"}') == n + m
    assert delta('mxgate_transactions_total{end="rset"}') == 1
    assert delta("mxgate_connections_accepted_total") == sessions
    # every message: EHLO, MAIL, RCPT, DATA's 354, the end; greeting; QUIT
    assert delta('mxgate_replies_total{class="5xx"}') == m + k
    assert delta('mxgate_replies_total{class="3xx"}') == n + m
    assert delta('mxgate_relay_latency_seconds_count') == n + m
    assert delta('mxgate_session_duration_seconds_count') == sessions
    assert delta('mxgate_downstream_replies_total{class="5xx"}') == m
    assert delta("mxgate_relayed_bytes_total") > n * len(make_message())


def test_health_and_readiness_follow_the_downstream(make_sink, gateway):
    sink = make_sink()
    gw = ops_gateway(gateway, sink)
    assert wait_status(gw, "/healthz", 200) is True
    assert wait_status(gw, "/readyz", 200) is True
    sink.stop()
    # the pool finds out at its next connect (a client's, or the probe's)
    send_mail(gw.port, timeout=10)
    assert wait_status(gw, "/readyz", 503) is True
    assert get(gw, "/healthz")[0] == 200  # alive, just not ready
    sink.start()
    assert wait_status(gw, "/readyz", 200, timeout=10) is True, "ready again once the server is back"
    assert send_mail(gw.port).delivered


def test_unknown_path_and_method(sink, gateway):
    gw = ops_gateway(gateway, sink)
    assert get(gw, "/nothing")[0] == 404
    req = urllib.request.Request(gw.http + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405


def test_sigterm_turns_readiness_off_before_the_listener_closes(sink, gateway):
    gw = ops_gateway(gateway, sink, drain_delay=3)
    assert wait_status(gw, "/readyz", 200) is True
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    assert wait_status(gw, "/readyz", 503, timeout=2) is True
    assert time.monotonic() - t0 < 1.0, "readiness must go first"
    # meanwhile mail is still taken: a balancer may not have noticed yet
    res = send_mail(gw.port)
    assert res.delivered, res
    assert m_draining(gw) == 1
    # then the listener closes and the process drains and exits 0
    deadline = time.monotonic() + 3 + 5
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            socket.create_connection((HOST, gw.port), timeout=0.5).close()
            time.sleep(0.1)
        except OSError:
            closed = True
    assert closed, "the listener should close after drain_delay"
    assert time.monotonic() - t0 >= 2.5, "the listener must stay open for drain_delay"
    assert gw.wait(10) == 0


def m_draining(gw):
    return metrics(gw)["mxgate_draining"]


def test_endpoint_off_and_port_taken(sink, gateway):
    gw = gateway(downstream=sink.addr, http_listen="")
    assert send_mail(gw.port).delivered
    # a taken port stops start-up with a message naming it
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        from mxtest import Gateway, StartError
        g = Gateway({"listen": "%s:%d" % (HOST, free_port()), "http_listen": "%s:%d" % (HOST, port),
                     "maildir": "/tmp/mxgate-ops-maildir", "workers": 1}, log_path="/tmp/mxgate-ops-taken.log")
        with pytest.raises(StartError) as e:
            g.start(5)
        assert "http_listen" in str(e.value)
    finally:
        s.close()
