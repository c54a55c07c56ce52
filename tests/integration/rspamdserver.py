"""
rspamdserver - a real rspamd for the tests (Debian's rspamd 3.4), on
127.0.0.1 and free ports, asking DNS only of the test's DnsServer, and
check(), a small /checkv2 client.

    r = Rspamd(tmp_path / "rspamd", dns.addr).start()
    verdict = r.check(message_bytes, ip="127.0.0.1", mail_from="a@b.test",
                      rcpts=["user@example.com"])
    verdict["action"], verdict["symbols"], verdict["milter"]["add_headers"]
    r.pause(); r.resume(); r.kill(); r.start(); r.stop()

What the configuration does (everything under workdir; /etc/rspamd is read,
never written):

  - the normal worker alone on 127.0.0.1:<free port> (.addr, .url), one
    process; the controller on another free port; no proxy, no fuzzy worker.
  - DNS: only the given nameserver (1 s timeout, one retransmit). Modules
    that would go further are off: fuzzy_check (its servers are resolved
    with the system resolver at start-up), rbl (DNS lists of the world),
    phishing, asn, emails, multimap (maps fetched over HTTPS) and the Redis
    ones (none is configured). HTTPS maps that other modules name still get
    looked up: the DnsServer answers NXDOMAIN and rspamd falls back to the
    maps shipped in /etc/rspamd.
  - check_local = true, check_authed = true (options): 127.0.0.1, the
    address every test client has, is always "local" to rspamd (loopback is
    local whatever local_addrs says; local_addrs only adds networks), and
    SPF, DMARC, hfilter, once_received, ... skip local clients unless
    check_local is on. local_addrs is emptied too, so only loopback is local.
  - milter_headers: X-Spamd-Result, X-Rspamd-Server, X-Rspamd-Queue-Id,
    Authentication-Results, X-Spam-Status, X-Spamd-Bar, also for local and
    authenticated clients (skip_local/skip_authenticated off).
  - dmarc: a p=reject failure forces the reject action, p=quarantine "add
    header" (dmarc { actions { ... } }).
  - test hooks (test_hooks=True, the default): a prefilter that forces the
    action named in a message's X-Mxtest-Action header ("reject",
    "soft reject", "greylist", "add header", "rewrite subject", "no action"),
    with the text of X-Mxtest-Message (if any) as smtp_message. Messages
    without the header are scanned as usual.

  - url_tld: a short public suffix list (TLDS) in place of the 12k-rule
    one, and disable_hyperscan: see Start-up.
  - no DKIM or ARC signing (it would look for keys in DBDIR).

Start-up. With Debian's defaults a first start takes ~15-30 s on two cores:
the main process compiles the public suffix list into one Hyperscan
database (~40 MB), and after the first pong the hs_helper goes on compiling
the regular expressions for seconds more, on the tests' CPUs. Here the
suffix list is short and the regular expressions run on PCRE
(disable_hyperscan; a scan still takes milliseconds), so a start with
nothing cached takes ~2-4 s. What is still compiled (multipattern .hsmp and
map .hsmc files, ~1.5 MB) is kept in <repo>/build/rspamd-db (SEED_DIR) for
the next start (~1 s). rspamd does not lock its DBDIR, and two instances
must not share one: each keeps its control socket, history and statistics
there, and rspamd's hs_helper deletes the compiled files in it that do not
match its own configuration. So each instance has its own DBDIR under its
workdir, filled with a copy of the seed; what it compiled is copied back
when it starts and when it stops (under a temporary name, then renamed:
rspamd writes these files the same way, never in place, so instances
started side by side never see half a file). The first scan after a start
builds more (~0.5 s): start() makes a warm-up scan of its own.

Processes: rspamd -f runs as the leader of its own session and process
group; its controller and normal worker are in that group, so
pause()/resume()/kill() signal the group (os.killpg). rspamd's workers
outlive a main process that is killed (and go on serving), so a watchdog
process outside the group holds a pipe from this process and kills the
group when it reads EOF: when the test run ends, however it ends. The main
process also gets PR_SET_PDEATHSIG, and an atexit hook kills every instance
still running. Every wait is bounded.
"""
import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from mxtest import HOST, ROOT, free_port

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
CONFDIR = "/etc/rspamd"
SEED_DIR = os.path.join(ROOT, "build", "rspamd-db")
_CACHE_EXT = (".hs", ".hsmp", ".hsmc")
SEED_MAX_FILES = 1000               # past either, the seed is cut down (_publish_db)
SEED_MAX_BYTES = 128 * 1024 * 1024

GTUBE = (b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X")

WARMUP = (b"From: warm-up <warm-up@warm-up.invalid>\r\nTo: <postmaster@warm-up.invalid>\r\n"
          b"Subject: warm-up\r\nMessage-ID: <warm-up@warm-up.invalid>\r\n\r\n"
          b"Warm-up: https://www.example.org/ and mail@example.com\r\n")

_live = set()
_live_lock = threading.Lock()


def rspamd_available():
    return os.access(RSPAMD, os.X_OK) and os.path.exists(os.path.join(CONFDIR, "rspamd.conf"))


def _kill_all_live():
    with _live_lock:
        live = list(_live)
    for r in live:
        r.kill()


atexit.register(_kill_all_live)


def _pdeathsig():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_WATCHDOG = """
import os, signal, sys
fd, pgid = int(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    try:
        if not os.read(fd, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
try:
    os.killpg(pgid, signal.SIGCONT)
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""

# The test hook: X-Mxtest-Action forces an action (see the module doc).
TEST_HOOKS_LUA = r"""
local ACTIONS = {
  ['reject'] = true, ['soft reject'] = true, ['greylist'] = true,
  ['add header'] = true, ['rewrite subject'] = true, ['no action'] = true,
}
rspamd_config:register_symbol{
  name = 'MXTEST_FORCED_ACTION',
  type = 'prefilter',
  priority = 10,
  callback = function(task)
    local want = task:get_header('X-Mxtest-Action')
    if not want then return end
    want = want:lower():gsub('^%s+', ''):gsub('%s+$', '')
    if not ACTIONS[want] then return end
    local text = task:get_header('X-Mxtest-Message') or ('forced ' .. want .. ' (test)')
    task:set_pre_result(want, text, 'mxtest')
  end,
}
"""


TLDS = """// the public suffixes rspamd knows here (url_tld): enough for the tests' names
com
net
org
edu
gov
int
arpa
info
io
de
fr
nl
uk
co.uk
org.uk
test
example
invalid
localhost
"""


def _conf_files(normal_port, controller_port, dns_addr, db, tld_path, test_hooks):
    """{path relative to LOCAL_CONFDIR: text}."""
    files = {
        # override.d: bind_socket replaces the "localhost:1133x" of rspamd.conf
        # instead of being merged with it.
        "override.d/worker-normal.inc": 'bind_socket = "%s:%d";\ncount = 1;\n' % (HOST, normal_port),
        "override.d/worker-controller.inc": 'bind_socket = "%s:%d";\ncount = 1;\n'
                                            % (HOST, controller_port),
        "override.d/worker-proxy.inc": "enabled = false;\ncount = 0;\n",
        "override.d/worker-fuzzy.inc": "enabled = false;\ncount = -1;\n",
        "local.d/options.inc": "\n".join([
            'dns {',
            '  nameserver = ["%s"];' % dns_addr,
            '  timeout = 1s;',
            '  retransmits = 1;',
            '}',
            # 127.0.0.1 is always local to rspamd (loopback); check it anyway
            "check_local = true;",
            "check_authed = true;",
            "control_socket = \"%s mode=0600\";" % os.path.join(db, "rspamd.sock"),
            # the public suffix list (12k rules) is compiled into one
            # Hyperscan database at every start with nothing cached: ~15 s
            # of two CPUs; these few suffixes are all the tests' names need
            'url_tld = "%s";' % tld_path,
            # regular expressions by PCRE: no hs_helper compiling in the
            # background for seconds after the start, beside the tests
            "disable_hyperscan = true;",
            "",
        ]),
        # local_addrs adds to loopback; emptied so nothing else counts as local
        "override.d/options.inc": "local_addrs = [];\n",
        # info: one line per scan, and the line that says Hyperscan is loaded
        "local.d/logging.inc": 'type = "console";\nlevel = "info";\ncolor = false;\n',
        "local.d/milter_headers.conf": "\n".join([
            'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id",',
            '       "authentication-results", "x-spam-status", "x-spamd-bar"];',
            "authenticated_headers = [\"authentication-results\"];",
            "skip_local = false;",
            "skip_authenticated = false;",
            "",
        ]),
        "local.d/dmarc.conf": 'actions {\n  reject = "reject";\n  quarantine = "add header";\n}\n',
        # nothing that needs the world
        "local.d/fuzzy_check.conf": "enabled = false;\n",
        "override.d/fuzzy_check.conf": "enabled = false;\n",
        "local.d/rbl.conf": "enabled = false;\n",
        "local.d/surbl.conf": "enabled = false;\n",
        "local.d/phishing.conf": "enabled = false;\n",
        "local.d/asn.conf": "enabled = false;\n",
        "local.d/emails.conf": "enabled = false;\n",
        "local.d/multimap.conf": "enabled = false;\n",
        "local.d/rspamd_update.conf": "enabled = false;\n",
        "local.d/url_redirector.conf": "enabled = false;\n",
        "local.d/p0f.conf": "enabled = false;\n",
        "local.d/dcc.conf": "enabled = false;\n",
        # an inbound scanner: no signing (it would look for keys in DBDIR)
        "local.d/dkim_signing.conf": "enabled = false;\n",
        "local.d/arc.conf": "sign_inbound = false;\nsign_local = false;\nsign_authenticated = false;\n",
    }
    if test_hooks:
        files["local.d/rspamd.lua"] = TEST_HOOKS_LUA
    return files


class RspamdError(Exception):
    pass


class Rspamd:
    """rspamd on 127.0.0.1 and free ports; see the module doc.

    workdir        where its configuration, DBDIR, RUNDIR and output go
                   (created; kept for inspection)
    dns_addr       "127.0.0.1:PORT" of the DnsServer, its only nameserver
    extra_local_d  {file name: text} written into local.d (a module's .conf,
                   rspamd.lua, ...), replacing the defaults above if the name
                   is the same
    test_hooks     the X-Mxtest-Action prefilter (default on)
    """

    def __init__(self, workdir, dns_addr, extra_local_d=None, test_hooks=True):
        self.workdir = os.path.abspath(str(workdir))
        self.dns_addr = dns_addr
        self.extra_local_d = dict(extra_local_d or {})
        self.test_hooks = test_hooks
        self.port = free_port()
        self.controller_port = free_port()
        self.proc = None
        self.paused = False
        self.started_in = None      # seconds the last start() took
        self.out_path = os.path.join(self.workdir, "rspamd.out")
        self._out = None
        self.confdir = os.path.join(self.workdir, "local")
        self.dbdir = os.path.join(self.workdir, "db")
        self.rundir = os.path.join(self.workdir, "run")
        self.logdir = os.path.join(self.workdir, "log")
        self._short = None
        self._watchdog = None
        self._watchdog_w = None
        self._seeded_at = None

    @property
    def addr(self):
        return "%s:%d" % (HOST, self.port)

    @property
    def url(self):
        return "http://%s:%d" % (HOST, self.port)

    @property
    def controller_url(self):
        return "http://%s:%d" % (HOST, self.controller_port)

    # -- configuration

    def _write_config(self):
        for d in (self.workdir, self.confdir, self.dbdir, self.rundir, self.logdir,
                  os.path.join(self.confdir, "local.d"), os.path.join(self.confdir, "override.d")):
            os.makedirs(d, exist_ok=True)
        sock_dir = self.dbdir
        if len(os.path.join(sock_dir, "rspamd.sock")) > 100:    # sun_path holds 108 octets
            if self._short is None:
                self._short = tempfile.mkdtemp(prefix="rspamd-")
            sock_dir = self._short
        tld_path = os.path.join(self.confdir, "tld.dat")
        files = _conf_files(self.port, self.controller_port, self.dns_addr, sock_dir, tld_path,
                            self.test_hooks)
        for name, text in self.extra_local_d.items():
            files["local.d/" + name] = text
        files["tld.dat"] = TLDS
        for name, text in files.items():
            with open(os.path.join(self.confdir, name), "w") as f:
                f.write(text)

    def _seed_db(self):
        """Fill DBDIR with the seed's compiled files (mtimes kept: what this
        run compiles itself is what is newer than _seeded_at)."""
        try:
            names = [n for n in os.listdir(SEED_DIR) if n.endswith(_CACHE_EXT)]
        except OSError:
            names = []
        for n in names:
            dst = os.path.join(self.dbdir, n)
            if os.path.exists(dst):
                continue
            try:
                shutil.copy2(os.path.join(SEED_DIR, n), dst + ".seed")
                os.replace(dst + ".seed", dst)
            except OSError:
                pass
        self._seeded_at = time.time()

    def _publish_db(self):
        """Copy the compiled files this instance has and the seed lacks into
        the seed (under a temporary name, then renamed: atomic for an
        instance reading the seed meanwhile). rspamd writes these files the
        same way (temporary name, rename) and never rewrites one in place.

        Each start compiles a few small multipattern files anew (their
        digest follows an order that changes from run to run), so the seed
        grows by ~0.3 MB a run: past SEED_MAX_FILES files or SEED_MAX_BYTES,
        it is cut down to what this instance uses: its .hs files (the
        hs_helper deletes those that do not match the configuration) and
        the files it wrote itself."""
        try:
            os.makedirs(SEED_DIR, exist_ok=True)
            mine = [n for n in os.listdir(self.dbdir) if n.endswith(_CACHE_EXT)]
            have = set(os.listdir(SEED_DIR))
        except OSError:
            return
        for n in mine:
            if n in have:
                continue
            tmp = os.path.join(SEED_DIR, ".%s.%d.tmp" % (n, os.getpid()))
            try:
                shutil.copy2(os.path.join(self.dbdir, n), tmp)
                os.replace(tmp, os.path.join(SEED_DIR, n))
            except OSError:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        try:
            seed = [n for n in os.listdir(SEED_DIR) if n.endswith(_CACHE_EXT)]
            total = sum(os.path.getsize(os.path.join(SEED_DIR, n)) for n in seed)
            if len(seed) <= SEED_MAX_FILES and total <= SEED_MAX_BYTES:
                return
            keep = set()
            for n in mine:
                st = os.stat(os.path.join(self.dbdir, n))
                if n.endswith(".hs") or st.st_mtime >= (self._seeded_at or 0):
                    keep.add(n)
            for n in seed:
                if n not in keep:
                    os.unlink(os.path.join(SEED_DIR, n))
        except OSError:
            pass

    def argv(self):
        return [RSPAMD, "-f", "-u", "root", "-g", "root", "-c", os.path.join(CONFDIR, "rspamd.conf"),
                "--var=LOCAL_CONFDIR=%s" % self.confdir, "--var=DBDIR=%s" % self.dbdir,
                "--var=RUNDIR=%s" % self.rundir, "--var=LOGDIR=%s" % self.logdir]

    # -- lifecycle

    def start(self, timeout=40.0):
        """Start rspamd and wait (at most timeout seconds) until its normal
        worker answers /ping with "pong". Returns self; started_in is the
        seconds that took."""
        assert self.proc is None, "rspamd already running"
        if not rspamd_available():
            raise RspamdError("rspamd is not installed (%s)" % RSPAMD)
        self._write_config()
        self._seed_db()
        t0 = time.monotonic()
        self._out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True, preexec_fn=_pdeathsig)
        with _live_lock:
            _live.add(self)
        self._start_watchdog()
        try:
            ok = self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        if not ok:
            rc = self.proc.poll()
            tail = self.log_tail()
            self.kill()
            raise RspamdError("rspamd not ready on %s within %.0f s (exit code %r):\n%s"
                              % (self.addr, timeout, rc, tail))
        # the first scan after a start compiles what rspamd builds lazily
        # (~0.5 s): paid here, not by a test's first message
        try:
            self.check(WARMUP, helo="warm-up.invalid", mail_from="warm-up@warm-up.invalid",
                       rcpts=("postmaster@warm-up.invalid",),
                       timeout=max(1.0, t0 + timeout - time.monotonic()))
        except (OSError, http.client.HTTPException, RspamdError, ValueError):
            pass
        self.started_in = time.monotonic() - t0
        self._publish_db()
        return self

    def _start_watchdog(self):
        """A process outside the group that kills the group when this test
        process is gone, however it went: it waits on a pipe whose only
        writer is us. (rspamd's workers outlive their main process: killed,
        it leaves them serving.)"""
        r, w = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(r), str(self.proc.pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(r,), start_new_session=True, close_fds=True)
        finally:
            os.close(r)
        self._watchdog_w = w

    def _stop_watchdog(self):
        w, self._watchdog_w = self._watchdog_w, None
        if w is not None:
            os.close(w)          # EOF: it kills the (by now empty) group and exits
        if self._watchdog is not None:
            try:
                self._watchdog.wait(5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait(5)
            self._watchdog = None

    def ping(self, timeout=1.0):
        """True if the normal worker answers /ping with pong."""
        try:
            status, body = self._request("GET", "/ping", None, {}, timeout)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and body.strip() == b"pong"

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ping(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return True
            time.sleep(0.05)
        return False

    def _group_signal(self, sig):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def pids(self):
        """Every live process of this instance (its process group)."""
        if self.proc is None:
            return []
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
            except OSError:
                continue
            fields = st.rsplit(")", 1)[1].split()
            # fields[0] state, [1] ppid, [2] pgrp
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                out.append(int(d))
        return sorted(out)

    def _wait_group_gone(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self.pids():
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout=5.0):
        """SIGTERM (rspamd stops its workers), then SIGKILL to the whole
        group if anything is left after timeout. Safe to call twice."""
        if self.proc is None:
            return
        self._publish_db()
        if self.paused:
            self.resume()
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_group_gone(timeout):
            self._group_signal(signal.SIGKILL)
            self._wait_group_gone(5)
        self._reap()

    def kill(self):
        """SIGKILL to every process of the instance at once (a crash). Safe
        to call twice; start() may follow (same ports)."""
        if self.proc is None:
            return
        self._group_signal(signal.SIGKILL)
        self._publish_db()
        self._wait_group_gone(5)
        self._reap()

    def _reap(self):
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._stop_watchdog()
        self.proc = None
        self.paused = False
        with _live_lock:
            _live.discard(self)
        if self._out is not None:
            self._out.close()
            self._out = None

    def pause(self):
        """SIGSTOP to every process of the instance: connections are still
        accepted by the kernel, nothing is answered."""
        self._group_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self._group_signal(signal.SIGCONT)
        self.paused = False

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, n=40):
        try:
            with open(self.out_path, "r", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # -- a client

    def _request(self, method, path, body, headers, timeout):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def check(self, message, ip="127.0.0.1", helo="client.test", mail_from="sender@src.test",
              rcpts=("user@example.com",), queue_id=None, hostname=None, extra_headers=None,
              timeout=10.0):
        """POST the message to /checkv2 with the envelope as headers, as an
        MTA does; the JSON answer as a dict (adds "_elapsed", the seconds the
        request took). Raises RspamdError on a non-200 status."""
        hdrs = {"IP": ip, "Helo": helo, "From": mail_from}
        if queue_id:
            hdrs["Queue-Id"] = queue_id
        if hostname:
            hdrs["Hostname"] = hostname
        if extra_headers:
            hdrs.update(extra_headers)
        # several Rcpt: headers: http.client takes a list of (name, value) via putheader
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        t0 = time.monotonic()
        try:
            conn.putrequest("POST", "/checkv2", skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            for r in rcpts:
                conn.putheader("Rcpt", r)
            conn.putheader("Content-Length", str(len(message)))
            conn.endheaders(message)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RspamdError("rspamd answered %d: %r" % (resp.status, body[:500]))
        out = json.loads(body)
        out["_elapsed"] = time.monotonic() - t0
        return out


# ---------------------------------------------------------------- a fake


class FakeRspamd:
    """An HTTP server on 127.0.0.1 that plays rspamd's normal worker badly
    or exactly: it reads each request whole (head and Content-Length body),
    records it, answers by `mode`, and closes (as rspamd 3.4 does).

      "verdict"   200 with json.dumps(self.verdict) (default: no action)
      "garbage"   bytes that are not HTTP
      "error500"  500 with {"error": "..."}
      "badjson"   200 with a body that is not JSON
      "close"     closes without answering
      "stall"     answers nothing, keeps the connection open (until stop())
      "unread"    reads nothing at all, keeps the connection open: a large
                  request's send stays in flight (until stop())
      "reset"     reads the request's head, then resets the connection
                  (SO_LINGER 0) while the message is still being sent

    requests: [(method, path, [(name, value)], body)] in arrival order.
    """

    def __init__(self, mode="verdict"):
        self.mode = mode
        self.verdict = {"action": "no action", "score": 0.5, "required_score": 15.0,
                        "is_skipped": False, "symbols": {}, "messages": {}}
        self.port = free_port()
        self.requests = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._lsock = None
        self._thread = None
        self._conns = []

    @property
    def url(self):
        return "http://%s:%d" % (HOST, self.port)

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, self.port))
        s.listen(64)
        s.settimeout(0.1)
        self._lsock = s
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fake-rspamd")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._lsock:
            self._lsock.close()
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait_requests(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(0.2)
        buf = b""
        deadline = time.monotonic() + 30
        try:
            if self.mode == "unread":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                while not self._stop.wait(0.1):
                    pass
                return
            while b"\r\n\r\n" not in buf:
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    return
                buf += d
            head, _, body = buf.partition(b"\r\n\r\n")
            if self.mode == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            hdrs = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:] if ":" in l]
            clen = int(dict((k.lower(), v) for k, v in hdrs).get("content-length", "0"))
            while len(body) < clen:
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    break
                body += d
            with self.cond:
                self.requests.append((method, path, hdrs, body))
                self.cond.notify_all()
            mode = self.mode
            if mode == "stall":
                while not self._stop.wait(0.1):
                    pass
                return
            if mode == "close":
                return
            if mode == "garbage":
                out = b"this is not HTTP at all\r\n\r\n"
            elif mode == "error500":
                j = b'{"error":"fake failure"}'
                out = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(j), j))
            elif mode == "badjson":
                j = b'{"action": "no action", "score": '
                out = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(j), j))
            else:
                j = json.dumps(self.verdict).encode()
                out = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(j), j))
            c.sendall(out)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass
