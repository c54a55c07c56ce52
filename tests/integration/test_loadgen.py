"""
mxgate-load (bench/load/): its client against its own fault-injecting sink,
alone and with the gateway between them (relay-through and spool).

Every message is accounted for by Message-ID: the client's --record file
says which ones got a 250 at the end of data, the sink's --record file which
ones it accepted (or refused, tempfailed, closed on, found corrupt). A 250
the client got must be exactly one "accepted" at the sink; nothing the sink
accepted may be something the client did not get a 250 for (relay mode), and
no body may arrive corrupt (the sink checks X-Load-Checksum with --check).

build/mxgate-load comes from bench/load/load.mk (MXGATE_LOAD_BIN overrides);
without it every test here is skipped, loudly.
"""
import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from mxtest import HOST, ROOT, free_port

LOAD_BIN = os.environ.get("MXGATE_LOAD_BIN") or os.path.join(ROOT, "build", "mxgate-load")

pytestmark = pytest.mark.skipif(
    not os.access(LOAD_BIN, os.X_OK),
    reason="%s is missing: build it with `make build/mxgate-load` "
           "(bench/load/load.mk); the load generator tests did not run" % LOAD_BIN)


class LoadSink:
    """`mxgate-load sink` on a free port, with a count file and a record
    file; stop() sends SIGTERM and returns its JSON summary."""

    def __init__(self, tmp_path, name="sink", args=()):
        self.port = free_port()
        self.addr = "%s:%d" % (HOST, self.port)
        self.count_file = str(tmp_path / (name + ".counts.json"))
        self.record_file = str(tmp_path / (name + ".rec"))
        self.err_file = str(tmp_path / (name + ".stderr"))
        self.argv = [LOAD_BIN, "sink", "--listen", self.addr, "--count-file", self.count_file,
                     "--record", self.record_file, "--quiet"] + [str(a) for a in args]
        self.proc = None
        self.summary = None

    def start(self, timeout=10.0):
        self._err = open(self.err_file, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sink exited with %s: %s" % (self.proc.returncode, self.stderr()))
            if os.path.exists(self.count_file):
                return self
            time.sleep(0.02)
        raise AssertionError("sink not ready in %.0f s: %s" % (timeout, self.stderr()))

    def counts(self):
        try:
            with open(self.count_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def wait_counts(self, pred, timeout):
        deadline = time.monotonic() + timeout
        c = self.counts()
        while not pred(c) and time.monotonic() < deadline:
            time.sleep(0.1)
            c = self.counts()
        return c

    def stop(self, timeout=10.0):
        if self.proc is None:
            return self.summary
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            raise AssertionError("sink did not exit within %.0f s of SIGTERM" % timeout)
        finally:
            self._err.close()
        rc = self.proc.returncode
        self.proc = None
        assert rc == 0, "sink exit code %r: %s" % (rc, self.stderr())
        self.summary = json.loads(out)
        return self.summary

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stderr(self):
        try:
            with open(self.err_file, "rb") as f:
                return f.read().decode("utf-8", "replace")[-2000:]
        except OSError:
            return ""

    def records(self):
        """[(message-id, what, code)] in the order written."""
        out = []
        with open(self.record_file) as f:
            for line in f:
                mid, what, code = line.split()
                out.append((mid, what, int(code)))
        return out


@pytest.fixture
def load_sink(tmp_path):
    sinks = []

    def make(name="sink", args=()):
        s = LoadSink(tmp_path, name, args).start()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.kill()


def run_client(tmp_path, target, args, timeout=60, name="client"):
    """`mxgate-load client`; returns (summary, {message-id: outcome}) where
    outcome is the final reply code (int) or a transport error name."""
    rec = str(tmp_path / (name + ".rec"))
    argv = [LOAD_BIN, "client", "--target", target, "--record", rec, "--quiet",
            "--timeout", str(timeout - 5)] + [str(a) for a in args]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert p.returncode == 0, "client exit code %d\nstderr: %s\nstdout: %s" % (
        p.returncode, p.stderr.decode()[-2000:], p.stdout.decode()[-2000:])
    summary = json.loads(p.stdout)
    outcomes = {}
    with open(rec) as f:
        for line in f:
            mid, what = line.split()
            assert mid not in outcomes, "client recorded %s twice" % mid
            outcomes[mid] = int(what) if what.isdigit() else what
    return summary, outcomes


def check_latency(h, count):
    assert h["count"] == count, h
    assert 0 < h["min_us"] <= h["p50_us"] <= h["p90_us"] <= h["p99_us"] <= h["p999_us"] <= h["max_us"], h
    assert h["min_us"] <= h["mean_us"] <= h["max_us"], h


def accepted_ids(sink_records):
    ids = [mid for mid, what, _ in sink_records if what == "accepted"]
    dup = [m for m, n in Counter(ids).items() if n > 1]
    assert not dup, "the sink accepted %d messages more than once, e.g. %s" % (len(dup), dup[:3])
    return set(ids)


def test_client_and_sink_alone(tmp_path, load_sink):
    """2000 messages over 20 pipelined sessions straight into the sink:
    every one acknowledged, recorded on both sides, none corrupt."""
    sink = load_sink(args=["--check", "--threads", "2"])
    summary, outcomes = run_client(tmp_path, sink.addr, [
        "--connections", 20, "--messages", 2000, "--pipelining", "on", "--threads", 2,
        "--size-dist", "1k:50,10k:40,100k:10", "--rcpts", 2])
    final = sink.stop()

    assert summary["completed"] is True and summary["aborted"] == ""
    assert summary["messages_ok"] == 2000 and summary["messages_failed"] == 0, summary
    assert summary["outcomes"] == {"250": 2000}
    assert summary["replies"]["354"] == 2000 and summary["replies"]["220"] == 20
    assert summary["replies"]["250"] == 2000 * 4 + 20  # MAIL, 2 RCPT, end of data; EHLO
    assert not any(summary["errors"].values()), summary["errors"]
    assert summary["connects"] == 20 and summary["greetings"] == 20
    assert summary["config"]["pipelining"] is True and summary["config"]["connections"] == 20
    check_latency(summary["latency"], 2000)
    check_latency(summary["connect_to_greeting"], 20)
    assert summary["msgs_per_s"] > 0 and summary["elapsed_s"] > 0
    assert summary["cpu_user_s"] + summary["cpu_sys_s"] > 0 and summary["cpu_s_per_1000_msgs"] > 0

    assert len(outcomes) == 2000 and set(outcomes.values()) == {250}
    recs = sink.records()
    assert accepted_ids(recs) == set(outcomes)
    assert len(recs) == 2000
    assert final["messages_accepted"] == 2000 and final["checksum_ok"] == 2000
    assert final["corrupt"] == 0 and final["checksum_missing"] == 0 and final["messages_refused"] == 0
    assert final["sessions"] == 20 and final["open"] == 0 and final["rcpts"] == 4000
    # the count file ends with the same numbers
    assert sink.counts()["messages_accepted"] == 2000


def test_through_the_gateway_relay_with_faults(tmp_path, load_sink, gateway):
    """client -> mxgate (relay-through) -> sink that tempfails one message in
    ten, closes mid-DATA on a few percent and reads at 2 MB/s: the client's
    250s are exactly the sink's acceptances, the failures are 4xx."""
    sink = load_sink(args=["--check", "--tempfail-rate", 0.1, "--close-mid-data-rate", 0.03,
                           "--slow-read", "2m", "--seed", 7])
    gw = gateway(downstream=sink.addr, workers=2)
    summary, outcomes = run_client(tmp_path, "%s:%d" % (HOST, gw.port), [
        "--connections", 10, "--messages", 1000, "--size", "4k"], timeout=90)
    final = sink.stop()

    assert summary["completed"] is True
    assert summary["messages_ok"] + summary["messages_failed"] == 1000
    assert len(outcomes) == 1000
    ok = {m for m, o in outcomes.items() if o == 250}
    assert len(ok) == summary["messages_ok"]
    recs = sink.records()
    acc = accepted_ids(recs)
    assert ok == acc, "client 250 but not accepted: %s; accepted but no 250: %s" % (
        sorted(ok - acc)[:3], sorted(acc - ok)[:3])
    assert final["corrupt"] == 0 and not [r for r in recs if r[1] == "corrupt"]
    assert final["checksum_ok"] == final["messages_accepted"] + final["tempfail"]

    # every failure is the gateway passing on a temporary one
    failed = {m: o for m, o in outcomes.items() if o != 250}
    assert all(isinstance(o, int) and 400 <= o < 500 for o in failed.values()), Counter(failed.values())
    faults = final["tempfail"] + final["closed_mid_data"]
    assert final["tempfail"] > 0 and final["closed_mid_data"] > 0, final
    assert len(failed) > 0
    # each fault at the sink is one 4xx at the client (the gateway retries
    # nothing in relay mode), give or take a message the gateway refused
    # on its own while a downstream connection was being replaced
    assert faults <= len(failed) <= faults + 5, (len(failed), final)
    faulted = {mid for mid, what, _ in recs if what in ("tempfail", "closed")}
    assert faulted <= set(failed), sorted(faulted - set(failed))[:3]


def test_through_the_gateway_spool_exactly_once(tmp_path, load_sink, gateway):
    """client -> mxgate (delivery = spool, retries every second) -> sink
    that tempfails, closes mid-DATA and reads slowly: every message the
    client got a 250 for is accepted by the sink exactly once."""
    sink = load_sink(args=["--check", "--tempfail-rate", 0.1, "--close-mid-data-rate", 0.03,
                           "--slow-read", "2m", "--seed", 11])
    gw = gateway(downstream=sink.addr, workers=2, delivery="spool", spool_dir=str(tmp_path / "spool"),
                 retry_max_interval=1)
    summary, outcomes = run_client(tmp_path, "%s:%d" % (HOST, gw.port), [
        "--connections", 10, "--messages", 1000, "--size", "4k"], timeout=90)
    assert summary["completed"] is True
    ok = {m for m, o in outcomes.items() if o == 250}
    assert len(ok) == 1000, Counter(outcomes.values())  # the spool acknowledges once durable

    c = sink.wait_counts(lambda c: c.get("messages_accepted", 0) >= len(ok), 30)
    time.sleep(0.5)  # a duplicate, were there one, would show up now
    final = sink.stop()
    assert final["messages_accepted"] >= len(ok), "after 30 s: %r" % c
    recs = sink.records()
    acc = accepted_ids(recs)  # no duplicates
    assert acc == ok, "missing %d, e.g. %s; unexpected %s" % (len(ok - acc), sorted(ok - acc)[:3],
                                                               sorted(acc - ok)[:3])
    assert final["corrupt"] == 0
    # the faults happened and were retried through
    assert final["tempfail"] > 0 and final["closed_mid_data"] > 0, final
    retried = {mid for mid, what, _ in recs if what in ("tempfail", "closed")}
    assert retried and retried <= acc


def test_starttls_through_the_gateway(tmp_path, load_sink, gateway):
    """client --starttls -> mxgate (tls = may) -> sink: 300 messages over 10
    persistent TLS sessions (one full handshake each), then 100 messages in
    per-message sessions that resume the thread's last TLS session; every
    client 250 is one acceptance at the sink. Against the sink itself, which
    offers no STARTTLS, every session fails with no_starttls."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed (make deps)")
    key, pem = str(tmp_path / "gw.key"), str(tmp_path / "gw.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", pem, "-days", "2", "-subj", "/CN=mx.test"],
                   check=True, capture_output=True, timeout=60)
    sink = load_sink(args=["--check"])
    gw = gateway(downstream=sink.addr, workers=2, tls="may", tls_cert_file=pem, tls_key_file=key)
    target = "%s:%d" % (HOST, gw.port)

    pers, pout = run_client(tmp_path, target, [
        "--starttls", "--connections", 10, "--messages", 300, "--run-id", "tlspersist"], timeout=90,
        name="persistent")
    assert pers["completed"] is True and pers["config"]["starttls"] is True
    assert pers["messages_ok"] == 300 and pers["outcomes"] == {"250": 300}, pers["outcomes"]
    assert not any(pers["errors"].values()), pers["errors"]
    assert pers["connects"] == 10 and pers["greetings"] == 10
    assert pers["tls_handshakes"] == pers["connects"] == 10
    assert pers["tls_full"] + pers["tls_resumed"] == 10
    assert pers["replies"]["220"] == 20  # the greeting and the 220 to STARTTLS
    check_latency(pers["tls_handshake"], 10)
    check_latency(pers["connect_to_greeting"], 10)
    check_latency(pers["latency"], 300)

    per, mout = run_client(tmp_path, target, [
        "--starttls", "--connections", 10, "--messages", 100, "--session", "per-message",
        "--run-id", "tlspermsg"], timeout=90, name="permessage")
    assert per["completed"] is True and per["config"]["tls_resume"] is True
    assert per["messages_ok"] == 100 and per["outcomes"] == {"250": 100}, per["outcomes"]
    assert not any(per["errors"].values()), per["errors"]
    # a session that connects once the last messages are taken only quits
    assert per["tls_handshakes"] == per["connects"] >= 100, per
    assert per["tls_resumed"] > 0 and per["tls_full"] + per["tls_resumed"] == per["tls_handshakes"], per
    check_latency(per["tls_handshake"], per["tls_handshakes"])

    # the sink offers no STARTTLS: each session is counted and fails
    nos, nout = run_client(tmp_path, sink.addr, [
        "--starttls", "--connections", 2, "--duration", 1], timeout=30, name="nostarttls")
    assert nos["messages_ok"] == 0 and not nout
    assert nos["errors"]["no_starttls"] >= 2 and nos["tls_handshakes"] == 0, nos["errors"]

    final = sink.stop()
    ok = {m for m, o in list(pout.items()) + list(mout.items()) if o == 250}
    assert len(ok) == 400
    assert accepted_ids(sink.records()) == ok
    assert final["messages_accepted"] == 400 and final["corrupt"] == 0 and final["checksum_ok"] == 400
