"""
spfclient - drive the SPF helper (`mxgate --spf-helper`) from Python the way a
worker does: one end of an AF_UNIX SOCK_SEQPACKET socketpair, one datagram per
request or reply, replies matched by id (workers/spfd/spf_proto.h has the format).

    with SpfHelper("build/mxgate", dns.addr) as h:
        result, received, comment, ttl = h.check("192.0.2.1", "mx.example.com",
                                                 "user@example.com")
        many = h.check_many([(ip, helo, sender), ...])   # pipelined

The helper's stderr goes to a file (log_path, or a temporary one): log_text()
returns it, for a failing test's report. Not thread-safe: one caller at a time.
"""
import ipaddress
import os
import selectors
import signal
import socket
import struct
import subprocess
import tempfile
import time

REQ = struct.Struct("=QBBHHH16s")    # spf_req_t: 64-bit id, 32 octets
RES = struct.Struct("=QBBHHHII")     # spf_res_t: 64-bit id, 24 octets
PROTO_MAX = 4096                     # SPF_PROTO_MAX
RESULT_NAMES = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")


class HelperError(Exception):
    """The helper died, closed its socket, or sent a malformed reply."""


def result_name(n):
    return RESULT_NAMES[n] if n < len(RESULT_NAMES) else "temperror"


def encode_request(req_id, ip, helo, sender):
    """One request datagram. ip: text or an ipaddress object; helo and sender
    text (UTF-8) or bytes; sender "" for the null sender."""
    a = ipaddress.ip_address(ip)
    helo = helo.encode("utf-8") if isinstance(helo, str) else bytes(helo)
    sender = sender.encode("utf-8") if isinstance(sender, str) else bytes(sender)
    return REQ.pack(req_id, a.version, 0, len(helo), len(sender), 0,
                    a.packed.ljust(16, b"\0")) + helo + sender


def decode_reply(dgram):
    """(id, result name, received, comment, ttl) of one reply datagram."""
    if len(dgram) < RES.size:
        raise HelperError("short reply: %d octets %r" % (len(dgram), dgram[:64]))
    rid, result, _, rlen, clen, _, ttl, _ = RES.unpack_from(dgram)
    body = dgram[RES.size:]
    if rlen + clen != len(body):
        raise HelperError("reply %d: lengths %d+%d but %d octets follow the header"
                          % (rid, rlen, clen, len(body)))
    if result >= len(RESULT_NAMES):
        raise HelperError("reply %d: result number %d" % (rid, result))
    received = body[:rlen].decode("ascii", "backslashreplace")
    comment = body[rlen:].decode("ascii", "backslashreplace")
    return rid, RESULT_NAMES[result], received, comment, ttl


class SpfHelper:
    """`binary --spf-helper --fds N --dns-server ADDR --threads T [extra_args]`.

    dns_server: "127.0.0.1:PORT", "[::1]:PORT", or anything with an .addr
    (a DnsServer). start() returns self once the process runs; it does not
    wait for a first answer (check() does, up to its timeout).
    """

    def __init__(self, binary, dns_server, threads=4, extra_args=(), log_path=None,
                 env=None):
        self.binary = binary
        self.dns_server = dns_server      # its address is read at start()
        self.threads = threads
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.env = env
        self.proc = None
        self.sock = None
        self.returncode = None
        self._next_id = 1
        self._log = None

    def command(self, fd):
        """The helper's command line, its end of the socketpair being fd."""
        return [self.binary, "--spf-helper", "--fds", "%d" % fd,
                "--dns-server", getattr(self.dns_server, "addr", self.dns_server), "--threads", str(self.threads)] + \
            self.extra_args

    # -- lifecycle

    def start(self):
        assert self.proc is None, "helper already running"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self.log_path:
            self._log = open(self.log_path, "w+b")
        else:
            self._log = tempfile.TemporaryFile(prefix="spf-helper-")
        try:
            self.proc = subprocess.Popen(self.command(theirs.fileno()), pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        except BaseException:
            ours.close()
            self._log.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.sock.setblocking(False)
        return self

    def stop(self, timeout=5.0):
        """Close our end (the helper should exit on EOF), then SIGTERM, then
        SIGKILL; each step waits a bounded time. Returns the exit code."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        p, self.proc = self.proc, None
        if p is None:
            return self.returncode
        try:
            p.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.returncode = p.returncode
        return self.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, tail=20000):
        """What the helper wrote to stdout/stderr so far (the last tail octets)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        size = os.fstat(self._log.fileno()).st_size
        data = os.pread(self._log.fileno(), tail, max(0, size - tail))
        return data.decode("utf-8", "replace")

    # -- checks

    def new_id(self):
        i = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFFFFFFFFFF or 1
        return i

    def send_raw(self, dgram, timeout=5.0):
        """Send one datagram as is (for malformed-request tests)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.send(dgram)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("helper does not take requests (socket full)")
                self._wait(selectors.EVENT_WRITE, 0.05)

    def recv_raw(self, timeout=5.0):
        """One reply datagram as is, or raise TimeoutError / HelperError (EOF)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                d = self.sock.recv(PROTO_MAX + 1)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no reply from the SPF helper in %.1f s" % timeout)
                self._wait(selectors.EVENT_READ, min(left, 0.2))
                continue
            if not d:
                raise HelperError(self._died("closed its socket"))
            return d

    def _wait(self, event, seconds):
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, event)
            sel.select(seconds)

    def _died(self, what):
        rc = self.proc.poll() if self.proc else None
        return "SPF helper %s (exit code %r); its output ends:\n%s" % (
            what, rc, self.log_text(3000))

    def check(self, ip, helo, sender, timeout=30):
        """(result name, Received-SPF value, comment, ttl) for one check."""
        return self.check_many([(ip, helo, sender)], timeout)[0]

    def check_many(self, items, timeout=30):
        """Send every (ip, helo, sender) without waiting (as many in flight as
        the socket takes), collect the replies in any order, match them by id.
        Returns the results in the order of items. Raises TimeoutError if some
        reply is missing after timeout seconds, HelperError if the helper dies
        or answers an id it was never asked."""
        assert self.sock is not None, "helper not started"
        pending = {}
        queue = []
        for n, (ip, helo, sender) in enumerate(items):
            rid = self.new_id()
            pending[rid] = n
            queue.append(encode_request(rid, ip, helo, sender))
        results = [None] * len(queue)
        deadline = time.monotonic() + timeout
        sent = 0
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("SPF helper: %d of %d replies missing after %.1f s"
                                       % (len(pending), len(queue), timeout))
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(queue) else 0)
                sel.modify(self.sock, want)
                for _, ev in sel.select(min(left, 0.5)):
                    if ev & selectors.EVENT_WRITE:
                        while sent < len(queue):
                            try:
                                self.sock.send(queue[sent])
                            except BlockingIOError:
                                break
                            except (BrokenPipeError, ConnectionResetError):
                                raise HelperError(self._died("is gone"))
                            sent += 1
                    if ev & selectors.EVENT_READ:
                        for _ in range(1000):
                            try:
                                d = self.sock.recv(PROTO_MAX + 1)
                            except BlockingIOError:
                                break
                            except ConnectionResetError:
                                d = b""
                            if not d:
                                raise HelperError(self._died("closed its socket"))
                            rid, res, received, comment, ttl = decode_reply(d)
                            if rid in pending:
                                results[pending.pop(rid)] = (res, received, comment, ttl)
                            elif rid == 0 or rid >= self._next_id:
                                raise HelperError("reply for id %d, never asked" % rid)
                            # else: a late reply to an earlier check that timed out
        return results
