"""
End to end behind a real HAProxy (Debian's), as deployed: HAProxy in TCP
mode sends a PROXY v2 header (send-proxy-v2) to two mxgate instances and
checks each one's /readyz over HTTP; both relay to one sink.

- A client bound to 127.0.0.2 sends through HAProxy: the sink's copy names
  127.0.0.2 in mxgate's Received: header, mxgate's log names it, and SPF is
  evaluated for it (the sender's record passes 127.0.0.2 and fails
  127.0.0.1, the balancer's address).
- SIGTERM to one instance (drain_delay 3 s): its /readyz turns 503 at once,
  HAProxy takes it out before its listener closes, and no message sent
  meanwhile is refused.
"""
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import Client, HOST, free_port, make_message, new_msgid, transact

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY) or not unbound_available(),
                                reason="haproxy or unbound not installed (make deps)")

ZONE = {"sender.example.org": [("TXT", "v=spf1 ip4:127.0.0.2 -all")]}


class Haproxy:
    def __init__(self, workdir, servers, inter_ms=200):
        self.dir = workdir
        self.port = free_port()
        self.sock = os.path.join(workdir, "haproxy.sock")
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        lines = [
            "global",
            "    stats socket %s mode 600 level admin" % self.sock,
            "    maxconn 1000",
            "defaults",
            "    mode tcp",
            "    retries 3",
            "    option redispatch 1",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout check 2s",
            "frontend smtp",
            "    bind %s:%d" % (HOST, self.port),
            "    default_backend mxgate",
            "backend mxgate",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            "    default-server send-proxy-v2 check inter %dms fall 1 rise 1" % inter_ms,
        ]
        for name, smtp_port, http_port in servers:
            lines.append("    server %s %s:%d check port %d" % (name, HOST, smtp_port, http_port))
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(workdir, "haproxy.log"), "ab")
        self.proc = None

    def start(self):
        subprocess.run([HAPROXY, "-c", "-q", "-f", self.cfg], check=True, timeout=10)
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if all(s == "UP" for s in self.status().values()):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("haproxy's servers not UP: %r" % self.status())

    def status(self):
        """{server: 'UP' | 'DOWN' | ...} from the stats socket."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(self.sock)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        text = data.decode().lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == "mxgate" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = row["status"].split()[0]
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def dns(tmp_path):
    with DnsServer(tmp_path / "dns", ZONE) as d:
        yield d


def instance(gateway, sink, dns, name):
    http = free_port()
    gw = gateway(downstream=sink.addr, proxy_protocol="v2", proxy_trusted="127.0.0.1/32",
                 filters="limits, relay, recipients, spf", dns_server=dns.addr, dns_timeout=2,
                 http_listen="%s:%d" % (HOST, http), drain_delay=3, drain_timeout=10, hostname=name)
    gw.http_port = http
    return gw


def send_via(port, source="127.0.0.2"):
    """One message through the balancer from `source`; (msgid, Result)."""
    with Client(port, source=source) as c:
        g = c.greet()
        assert g.code == 220, g
        c.ehlo("client.example.org")
        msgid = new_msgid("lb")
        res = transact(c, "alice@sender.example.org", ["user@example.com"], make_message(msgid))
        c.cmd("QUIT")
    return msgid, res


def test_haproxy_send_proxy_v2_client_address_spf_and_drain(tmp_path, make_sink, gateway, dns):
    sink = make_sink()
    a = instance(gateway, sink, dns, "mx-a.test")
    b = instance(gateway, sink, dns, "mx-b.test")
    lb = Haproxy(str(tmp_path), [("a", a.port, a.http_port), ("b", b.port, b.http_port)])
    lb.start()
    try:
        # Both instances serve, each sees 127.0.0.2, SPF passes for it.
        seen = set()
        for _ in range(4):
            msgid, res = send_via(lb.port)
            assert res.delivered, res
            m = sink.wait_message(msgid)
            head = m.data.split(b"\r\n\r\n", 1)[0].decode()
            rcvd = head[head.index("\r\nReceived: from"):]  # after the SPF filter's own headers
            assert "([127.0.0.2])" in rcvd, rcvd
            seen.add("mx-a.test" if "by mx-a.test" in rcvd else "mx-b.test")
        assert seen == {"mx-a.test", "mx-b.test"}, "roundrobin reached both instances"
        for gw in (a, b):
            line = gw.wait_log(r"event=tx .*client=127\.0\.0\.2 .*end=data spf=pass")
            assert line, gw.log_tail()
            assert "client=127.0.0.1" not in "\n".join(
                l for l in gw.log().splitlines() if "event=tx" in l)

        # Stop a while mail keeps flowing.
        results, stop = [], threading.Event()

        def load():
            for _ in range(400):  # bounded; ~25 ms a message here
                if stop.is_set():
                    return
                try:
                    results.append(send_via(lb.port)[1])
                except Exception as e:  # a refused connect is a failure too
                    results.append(e)

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.3)
            a.signal(signal.SIGTERM)
            t0 = time.monotonic()
            down_at = None
            while time.monotonic() - t0 < 5:
                if lb.status().get("a") != "UP":
                    down_at = time.monotonic() - t0
                    break
                time.sleep(0.02)
            assert down_at is not None, "haproxy never took the draining instance out"
            assert "event=drain worker" not in a.log(), \
                "the listener closed before haproxy took the instance out"
            assert a.wait(timeout=20) == 0
            time.sleep(0.5)  # more messages after the instance is gone
        finally:
            stop.set()
            t.join(30)
        bad = [r for r in results if isinstance(r, Exception) or not r.delivered]
        assert not bad, bad[:5]
        assert len(results) >= 10
        assert a.wait_log(r"event=drain_delay seconds=3")
        assert lb.status().get("b") == "UP"
    finally:
        lb.stop()
