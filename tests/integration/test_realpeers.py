"""
mxgate between Postfix's own test tools: smtp-source as the client and
smtp-sink as the downstream MTA. smtp-sink -c keeps a running count of the
messages it received (mesg=N), which is what "arrived exactly once" is
checked against.
"""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from mxtest import HOST, free_port, send_mail

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

pytestmark = pytest.mark.skipif(not (os.path.exists(SINK) and os.path.exists(SOURCE)),
                                reason="Postfix's smtp-sink/smtp-source are not installed (make deps)")


class RealSink:
    def __init__(self, tmp_path, port=None, name="sink"):
        self.port = port or free_port()
        self.out = tmp_path / ("%s-%d.out" % (name, time.monotonic_ns()))
        args = [SINK, "-c", "%s:%d" % (HOST, self.port), "256"]
        if os.geteuid() == 0:
            args[1:1] = ["-u", "nobody"]  # smtp-sink drops privileges when root
        self.f = open(self.out, "wb")
        self.p = subprocess.Popen(args, stdout=self.f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("smtp-sink did not start")

    @property
    def addr(self):
        return "%s:%d" % (HOST, self.port)

    def count(self):
        if not self.f.closed:
            self.f.flush()
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes())
        return int(found[-1]) if found else 0

    def wait_count(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.count() < n:
            time.sleep(0.1)
        return self.count()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


def test_smtp_source_to_smtp_sink_exactly_once(tmp_path, gateway):
    sink = RealSink(tmp_path)
    try:
        gw = gateway(downstream=sink.addr, max_connections_per_ip=0, log_level="warn")
        n = 2000
        r = subprocess.run([SOURCE, "-d", "-s", "50", "-m", str(n), "-l", "4096", "-f", "sender@src.test",
                            "-t", "user@example.com", "%s:%d" % (HOST, gw.port)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        # smtp-source stops at the first refusal, so every message got its 250
        # from mxgate; each must have reached smtp-sink once, no more.
        assert sink.wait_count(n) == n
        time.sleep(0.3)
        assert sink.count() == n
    finally:
        sink.stop()


def test_smtp_sink_restarted_nothing_acknowledged_lost(tmp_path, gateway):
    port = free_port()
    sink = RealSink(tmp_path, port, "first")
    gw = gateway(downstream="%s:%d" % (HOST, port), log_level="warn")
    acked = 0
    tried = 0
    counted = 0
    try:
        for _ in range(40):
            tried += 1
            acked += send_mail(gw.port).delivered
        sink.stop()
        counted += sink.count()
        for _ in range(20):  # downstream down: 451, never 250
            tried += 1
            res = send_mail(gw.port)
            assert not res.delivered, res
        sink = RealSink(tmp_path, port, "second")
        deadline = time.monotonic() + 15
        recovered = 0
        while time.monotonic() < deadline and recovered < 20:
            tried += 1
            ok = send_mail(gw.port).delivered
            acked += ok
            recovered = recovered + 1 if ok else 0
            if not ok:
                time.sleep(0.2)
        assert recovered == 20, "the pool did not recover after smtp-sink came back"
        counted += sink.wait_count(acked - counted, timeout=10)
    finally:
        sink.stop()
    assert acked >= 60
    # Every acknowledged message is at a sink; none appears twice.
    assert counted == acked, (counted, acked, tried)
