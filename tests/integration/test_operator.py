"""
What an operator meets first: mxgate started as root gives root up before it
reads a byte from a client (and still delivers into a Maildir nobody else
can reach); a second instance on the same address refuses to start instead
of joining the first; a privileged port refused says what to do; a
downstream named in DNS may not exist yet and moves when its record does;
--version and --print-config -n.

The privilege tests need root (the suite runs as root); they skip otherwise.
"""
import os
import pwd
import grp
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import BINARY, HOST, Client, Gateway, SmtpSink, free_port, make_message, new_msgid, send_mail
from test_ops import get, wait_status

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: mxgate only drops privileges it has")


def default_user():
    """(name, uid, gid) of the user mxgate drops to when `user` is empty."""
    for name in ("mxgate", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return name, pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    pytest.skip("neither mxgate nor nobody exists here")


def proc_status(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


# ---------------------------------------------------------------- privileges


@needs_root
def test_root_is_dropped_before_any_client(tmp_path, gateway):
    name, uid, gid = default_user()
    hidden = tmp_path / "hidden"          # nobody may enter: 0700, root's
    hidden.mkdir(mode=0o700)
    maildir = hidden / "mail"
    gw = gateway(user=None, workers=2, maildir=str(maildir))   # None: the flag is left out
    line = gw.wait_log(r"event=privileges ", 5)
    assert line and "user=%s uid=%d " % (name, uid) in line and "gid=%d" % gid in line, gw.log_tail()
    # every thread of the process: ids, and no capability left
    st = proc_status("/proc/%d/status" % gw.pid)
    assert st["Uid"] == [str(uid)] * 4, st["Uid"]
    assert st["Gid"] == [str(gid)] * 4, st["Gid"]
    assert st.get("Groups", []) in ([], [str(gid)]), st.get("Groups")
    tasks = os.listdir("/proc/%d/task" % gw.pid)
    assert len(tasks) >= 3, tasks          # main, two workers (and the HTTP/resolver threads when set)
    for t in tasks:
        ts = proc_status("/proc/%d/task/%s/status" % (gw.pid, t))
        assert int(ts["CapEff"][0], 16) == 0, (t, ts["CapEff"])
        assert int(ts["CapPrm"][0], 16) == 0, (t, ts["CapPrm"])
        assert ts["Uid"] == [str(uid)] * 4, (t, ts["Uid"])
    # a message still lands: the Maildir's tmp/ and new/ were opened as root
    mid = new_msgid("privs")
    with smtplib.SMTP(HOST, gw.port, timeout=10) as s:
        s.ehlo("client.test")
        refused = s.sendmail("sender@src.test", ["user@example.com"], make_message(mid))
        assert refused == {}
    files = os.listdir(maildir / "new")
    assert len(files) == 1, files
    assert mid.encode() in (maildir / "new" / files[0]).read_bytes()
    assert os.stat(maildir / "new" / files[0]).st_uid == uid
    for sub in ("tmp", "new", "cur"):
        assert os.stat(maildir / sub).st_uid == uid, sub
    assert os.stat(hidden).st_uid == 0      # only the Maildir itself was given away


@needs_root
def test_user_root_keeps_root_and_says_so(gateway):
    gw = gateway(user="root", workers=1)
    line = gw.wait_log(r"event=privileges ", 5)
    assert line and "level=warn" in line and "user=root uid=0" in line and "action=kept" in line, line
    assert proc_status("/proc/%d/status" % gw.pid)["Uid"] == ["0"] * 4


@needs_root
@pytest.mark.parametrize("key,value,message", [
    ("user", "no-such-user-mx", "user: no-such-user-mx: no such user"),
    ("group", "no-such-group-mx", "group: no-such-group-mx: no such group"),
])
def test_unknown_user_or_group_stops_start_up(tmp_path, key, value, message):
    g = Gateway({"listen": "%s:%d" % (HOST, free_port()), "maildir": str(tmp_path / "mail"),
                 "hostname": "mx.test", "workers": 1, "user": None, key: value},
                log_path=str(tmp_path / "mxgate.log"))
    g.launch()
    assert g.wait(10) == 1
    assert message in g.log(), g.log()


@pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")
@needs_root
def test_spf_helper_restarted_after_the_drop(tmp_path, sink, gateway):
    name, uid, gid = default_user()
    with DnsServer(tmp_path, {"pass.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]}) as dns:
        gw = gateway(user=None, workers=1, downstream=sink.addr, filters="limits, relay, recipients, spf",
                     dns_server=dns.addr, dns_timeout=1, spf_timeout=10)

        def helper():
            out = subprocess.run(["pgrep", "-P", str(gw.pid)], capture_output=True, text=True).stdout.split()
            return int(out[0]) if out else None

        deadline = time.monotonic() + 5
        while not helper() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = helper()
        assert first, gw.log_tail()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and helper() in (None, first):
            time.sleep(0.1)
        second = helper()
        assert second and second != first, gw.log_tail()
        # spawned by the unprivileged gateway: it runs as that user, says so
        assert gw.wait_log(r"event=spf_helper_privileges .*action=none", 5), gw.log_tail()
        assert proc_status("/proc/%d/status" % second)["Uid"] == [str(uid)] * 4
        delivered = False
        deadline = time.monotonic() + 10
        while not delivered and time.monotonic() < deadline:
            mid = new_msgid("spfdrop")
            delivered = send_mail(gw.port, mail_from="alice@pass.test", msg=make_message(mid)).delivered
            if not delivered:
                time.sleep(0.3)
        assert delivered, gw.log_tail()
        assert gw.wait_log(r"event=tx .*spf=pass", 5)


def test_not_root_nothing_to_drop(tmp_path):
    """Started unprivileged (setpriv): no error, the uid at debug level."""
    if not ROOT or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to start mxgate as nobody")
    port = free_port()
    log = open(tmp_path / "nobody.log", "wb")
    p = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", BINARY,
                          "--listen", "%s:%d" % (HOST, port), "--downstream", "%s:9" % HOST, "--hostname",
                          "mx.test", "--workers", "1", "--http-listen", "", "--log-level", "debug"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/")
    try:
        deadline = time.monotonic() + 10
        greeted = False
        while time.monotonic() < deadline and not greeted and p.poll() is None:
            try:
                with Client(port, timeout=2) as c:
                    greeted = c.greet().code == 220
            except OSError:
                time.sleep(0.05)
        text = (tmp_path / "nobody.log").read_text()
        assert greeted, text
        nobody = pwd.getpwnam("nobody").pw_uid
        assert "event=privileges action=none uid=%d" % nobody in text, text
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


# ---------------------------------------------------------------- binding


def test_second_instance_on_the_same_address_is_refused(tmp_path, gateway):
    first = gateway(workers=2, hostname="first.test")
    second = Gateway({"listen": "%s:%d" % (HOST, first.port), "maildir": str(tmp_path / "mail2"),
                      "hostname": "second.test", "workers": 2},
                     log_path=str(tmp_path / "second.log"))
    second.launch()
    assert second.wait(10) != 0
    want = "listen %s:%d: address already in use (another mxgate or another server is listening there)" % (
        HOST, first.port)
    assert want in second.log(), second.log()
    # the first one still has every connection
    for _ in range(20):
        with Client(first.port, timeout=5) as c:
            g = c.greet()
            assert g.code == 220 and "first.test" in g.text, g
            c.cmd("QUIT")
            c.wait_closed(2)
    # a quick restart on the same address works (its closed connections
    # left sockets in TIME_WAIT; SO_REUSEADDR lets a listener bind over them)
    assert first.stop() == 0
    again = gateway(workers=1, hostname="again.test", listen="%s:%d" % (HOST, first.port))
    with Client(again.port) as c:
        assert "again.test" in c.greet().text


def test_http_listen_in_use_is_refused(tmp_path, gateway):
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        g = Gateway({"listen": "%s:%d" % (HOST, free_port()), "maildir": str(tmp_path / "mail"),
                     "hostname": "mx.test", "workers": 1, "http_listen": "%s:%d" % (HOST, port)},
                    log_path=str(tmp_path / "mxgate.log"))
        g.launch()
        assert g.wait(10) == 1
        assert "http_listen %s:%d: address already in use" % (HOST, port) in g.log(), g.log()
    finally:
        s.close()


def test_privileged_port_names_the_capability_and_the_sysctl():
    """As nobody, on a port below net.ipv4.ip_unprivileged_port_start."""
    if not ROOT or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to start mxgate as nobody")
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    if start <= 1:
        pytest.skip("every port is unprivileged here (ip_unprivileged_port_start = %d)" % start)
    port = min(start, 1024) - 1 - (os.getpid() % min(start - 1, 300))
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", BINARY,
                        "--listen", "%s:%d" % (HOST, port), "--downstream", "%s:9" % HOST,
                        "--hostname", "mx.test", "--workers", "1", "--http-listen", ""],
                       capture_output=True, text=True, timeout=20, cwd="/")
    assert p.returncode == 1, (p.returncode, p.stderr)
    err = p.stderr
    assert "listen %s:%d: Permission denied" % (HOST, port) in err, err
    assert "CAP_NET_BIND_SERVICE" in err, err
    assert "net.ipv4.ip_unprivileged_port_start is now %d" % start in err, err


# ---------------------------------------------------------------- downstream by name


class FixedPortDns(DnsServer):
    """A DnsServer that comes back on the same port after stop(): mxgate's
    dns_server does not move. The port is chosen once, as DnsServer does."""

    def __init__(self, workdir, records):
        super().__init__(workdir, records)
        self.fixed = DnsServer._free_port(self)

    def _free_port(self):
        return self.fixed


@pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")
def test_downstream_name_resolved_at_connect_time(tmp_path, make_sink, gateway):
    port = free_port()
    sink1 = make_sink(port=port)                      # 127.0.0.1:port
    sink2 = SmtpSink(port=port, host="127.0.0.3", hostname="sink2.test").start()
    dns = FixedPortDns(tmp_path / "dns", {"other.test": [("A", "192.0.2.1")]}).start()
    try:
        http = free_port()
        gw = gateway(downstream="mail.test:%d" % port, dns_server=dns.addr, dns_timeout=1, workers=1,
                     downstream_max_messages=1, http_listen="%s:%d" % (HOST, http))
        gw.http = "http://%s:%d" % (HOST, http)
        # the name does not exist yet: running, not ready, MAIL 451 4.4.1
        assert wait_status(gw, "/readyz", 503, timeout=5) is True
        assert get(gw, "/readyz")[1] == "downstream name does not resolve\n"
        with Client(gw.port) as c:
            c.ehlo()
            r = c.cmd("MAIL FROM:<a@src.test>")
            assert r.code == 451 and r.esc == "4.4.1", r
        time.sleep(2.5)                               # a few retries: still one line
        lines = [l for l in gw.log().splitlines() if "event=downstream_unresolved" in l]
        assert len(lines) == 1, lines
        assert "name=mail.test" in lines[0] and "NXDOMAIN" in lines[0], lines

        # the record appears (short TTL): ready, and mail goes to 127.0.0.1
        dns.stop()
        dns.records = {"mail.test": [("A", "127.0.0.1", 1)]}
        dns.start()
        assert wait_status(gw, "/readyz", 200, timeout=8) is True, gw.log_tail()
        mid = new_msgid("dns1")
        assert send_mail(gw.port, msg=make_message(mid)).delivered
        assert sink1.wait_message(mid, 5)
        assert gw.wait_log(r"event=downstream_resolved .*address=127\.0\.0\.1 ", 1)

        # the record moves: once the TTL has run out, new connections go there
        dns.stop()
        dns.records = {"mail.test": [("A", "127.0.0.3", 1)]}
        dns.start()
        deadline = time.monotonic() + 15
        moved = None
        while time.monotonic() < deadline and not moved:
            mid = new_msgid("dns2")
            assert send_mail(gw.port, msg=make_message(mid)).delivered
            moved = sink2.wait_message(mid, 1) and mid
            if not moved:
                assert sink1.find(mid), "delivered, but to neither sink"
                time.sleep(0.5)
        assert moved, gw.log_tail()
        assert gw.wait_log(r"event=downstream_resolved .*address=127\.0\.0\.3 ", 1)
        mid = new_msgid("dns3")
        assert send_mail(gw.port, msg=make_message(mid)).delivered
        assert sink2.wait_message(mid, 5), "the next connection goes to the new address too"
    finally:
        sink2.stop()
        dns.stop()


@pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")
def test_dns_server_gone_mid_run_keeps_the_last_address(tmp_path, make_sink, gateway):
    # The name resolves (TTL 1 s), then the DNS server stops answering for
    # several rounds: mail goes on to the last address found, readiness
    # stays, and the log says so once; when the server is back, the name
    # resolves again.
    port = free_port()
    sink = make_sink(port=port)
    dns = FixedPortDns(tmp_path / "dns", {"mail.test": [("A", "127.0.0.1", 1)]}).start()
    try:
        http = free_port()
        gw = gateway(downstream="mail.test:%d" % port, dns_server=dns.addr, dns_timeout=1, workers=1,
                     downstream_max_messages=1, http_listen="%s:%d" % (HOST, http))
        gw.http = "http://%s:%d" % (HOST, http)
        assert wait_status(gw, "/readyz", 200, timeout=8) is True, gw.log_tail()
        assert gw.wait_log(r"event=downstream_resolved .*address=127\.0\.0\.1 ", 2)
        dns.stop()
        # one message per connection, each connect reading the address
        # again, across several failed rounds (TTL 1 s, timeout 1 s)
        deadline = time.monotonic() + 6
        sent = 0
        while time.monotonic() < deadline:
            mid = new_msgid("dns-gone")
            r = send_mail(gw.port, msg=make_message(mid))
            assert r.delivered, (r, gw.log_tail())
            assert sink.wait_message(mid, 5)
            assert get(gw, "/readyz")[0] == 200
            sent += 1
            time.sleep(0.3)
        assert sent >= 5
        fails = [l for l in gw.log().splitlines() if "event=downstream_resolve_failed" in l]
        assert len(fails) == 1, fails
        assert "address=127.0.0.1" in fails[0] and "keeping the last address" in fails[0], fails
        dns.start()
        deadline = time.monotonic() + 10
        resolved = []
        while time.monotonic() < deadline and len(resolved) < 2:
            time.sleep(0.2)
            resolved = [l for l in gw.log().splitlines() if "event=downstream_resolved" in l]
        assert len(resolved) == 2 and "address=127.0.0.1" in resolved[1], gw.log_tail()
    finally:
        dns.stop()


# ---------------------------------------------------------------- the command line


def test_version_and_print_config_n(tmp_path):
    p = subprocess.run([BINARY, "--version"], capture_output=True, text=True, timeout=10)
    assert (p.returncode, p.stdout) == (0, "mxgate 0.2.0\n"), p
    conf = tmp_path / "mxgate.conf"
    conf.write_text("# a comment\nworkers = 3\n\n[mxgate]\nrecipient_limit = 100\nlisten = 127.0.0.1:2525,\n"
                    "    127.0.0.2:2525\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXGATE_")}
    env["MXGATE_DOWNSTREAM"] = "mail.test:25"
    p = subprocess.run([BINARY, "--config", str(conf), "--print-config", "-n", "--hostname", "mx.test",
                        "--workers", "0"], capture_output=True, text=True, timeout=10, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("# mxgate 0.2.0:"), lines
    body = "\n".join(lines[1:]) + "\n"
    # workers (back to its default by the flag) and recipient_limit (the
    # default, from the file) are not shown; the rest with their sources
    assert body == ("# %s, line 6\nlisten = 127.0.0.1:2525, 127.0.0.2:2525\n"
                    "# --hostname\nhostname = mx.test\n"
                    "# MXGATE_DOWNSTREAM\ndownstream = mail.test:25\n" % conf), body
    # and it loads again
    again = tmp_path / "again.conf"
    again.write_text(p.stdout)
    q = subprocess.run([BINARY, "--config", str(again), "--print-config"], capture_output=True, text=True,
                       timeout=10, env={k: v for k, v in env.items() if not k.startswith("MXGATE_")})
    assert q.returncode == 0, q.stderr
    assert "downstream = mail.test:25\n" in q.stdout and "hostname = mx.test\n" in q.stdout
