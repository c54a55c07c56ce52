"""
mxtest - helpers for the integration tests: free ports, a recording SMTP/LMTP
sink that plays the downstream, the build/mxgate process wrapper and a raw
SMTP client that shows the exact bytes and replies.

Everything listens and connects on 127.0.0.1 only. Every wait has a timeout
and every loop a bound, so a hung gateway fails a test instead of the suite.
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

HOST = "127.0.0.1"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("MXGATE_BIN") or os.path.join(ROOT, "build", "mxgate")

# ---------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_given = set()


def parse_metrics(text):
    """{'name{labels}': value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind to 0).
    Ports already handed out in this process are not handed out again."""
    with _ports_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((HOST, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found in 100 tries")


# ---------------------------------------------------------------- messages


def new_msgid(tag="t"):
    return "<%s.%s@mxtest.invalid>" % (tag, uuid.uuid4().hex)


def make_message(msgid=None, subject="test", body=None, headers=()):
    """A message in canonical form (CRLF line ends, not dot-stuffed)."""
    msgid = msgid or new_msgid()
    lines = [
        "From: Sender <sender@src.test>",
        "To: User <user@example.com>",
        "Subject: %s" % subject,
        "Date: Thu, 01 Jan 2026 00:00:00 +0000",
        "Message-ID: %s" % msgid,
    ]
    lines += list(headers)
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if body is None:
        body = b"Hello.\r\n"
    if isinstance(body, str):
        body = body.encode()
    return out + body


def dot_stuff(msg):
    """Wire form of a canonical message, without the final ".\\r\\n"."""
    lines = msg.split(b"\r\n")
    out = b"\r\n".join((b"." + l) if l.startswith(b".") else l for l in lines)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def unstuff(wire):
    """Canonical form of wire bytes that end with CRLF (end marker removed)."""
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines) + b"\r\n"


_MSGID_RE = re.compile(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)")


def message_id(data):
    m = _MSGID_RE.search(data)
    return m.group(1).decode("ascii", "replace") if m else None


RECEIVED_RE = re.compile(rb"\AReceived:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def split_received(data):
    """(first Received: header with its folded lines, rest) or (None, data)."""
    m = RECEIVED_RE.match(data)
    if not m:
        return None, data
    return m.group(0), data[m.end():]


# ---------------------------------------------------------------- sink


class SinkMessage:
    def __init__(self, conn_id, helo, mail_from, mail_params, rcpts, wire, reply):
        self.conn_id = conn_id
        self.helo = helo
        self.mail_from = mail_from          # the path without <>
        self.mail_params = mail_params      # the text after the path
        self.rcpts = list(rcpts)            # accepted recipients, paths without <>
        self.wire = wire                    # DATA bytes as received (dot-stuffed)
        self.data = unstuff(wire) if wire else b""
        self.reply = reply                  # the reply the sink gave (or would have)
        self.message_id = message_id(self.data)
        self.time = time.monotonic()
        self.tls = None                     # (version, cipher) when it came over TLS

    def __repr__(self):
        return "<SinkMessage %s from=%s rcpts=%s %d bytes reply=%r>" % (
            self.message_id, self.mail_from, self.rcpts, len(self.data), self.reply)


def split_path(text):
    """Split the text after "FROM:" / "TO:" into (path, params): the path as
    the client wrote it between the angle brackets (RFC 5321 4.1.2: a
    Quoted-string local part may hold ">", "@", spaces and backslash-escaped
    quotes and backslashes; none of them ends the path), and the parameters
    after it. The path is returned verbatim, quotes and escapes included.
    A path without angle brackets (not RFC 5321, tolerated) ends at the first
    space. An unterminated path returns everything after "<"."""
    rest = text.lstrip(" ")
    if not rest.startswith("<"):
        path, _, params = rest.partition(" ")
        return path, params.strip()
    i, n, quoted = 1, len(rest), False
    while i < n:
        ch = rest[i]
        if quoted:
            if ch == "\\":
                i += 2          # quoted-pairSMTP: backslash and any one character
                continue
            if ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ">":
            return rest[1:i], rest[i + 1:].strip()
        i += 1
    return rest[1:], ""


def _path(arg):
    """'FROM:<a@b> SIZE=1' -> ('a@b', 'SIZE=1'); 'TO:<"a>b"@c>' -> ('"a>b"@c', '')."""
    _, _, rest = arg.partition(":")
    return split_path(rest)


class SmtpSink:
    """A recording SMTP (or LMTP) server, the downstream the gateway relays to.

    Knobs (set any time; read per command):
      rcpt_replies   {address (lowercase): "550 5.1.1 text"} for RCPT
      mail_reply     a reply line for every MAIL, or None
      data_reply     reply line at end of data, or a callable(msg) -> line/None
      lmtp_replies   {address: line} per recipient at end of data (LMTP)
      data_delay     seconds to wait before the end-of-data reply
      command_delay  seconds to wait before every command reply
      drop_after_data_bytes  close the connection (no reply) once this many
                     DATA bytes arrived without the end marker
      drop_times     how many messages drop_after_data_bytes drops (None: every one)
      drop_at_eod    close the connection at end of data instead of replying
      fail_at        {verb: "close" | "silent"}: on receiving that command
                     (MAIL, RCPT, DATA, ... or "EOD" for the end of data)
                     send the replies already owed for earlier commands, then
                     "close": close the connection without replying;
                     "silent": reply to nothing more and discard all input,
                     keeping the connection open (until stop() or
                     idle_timeout)
      stall_after_data_bytes  stop reading (connection kept open, nothing
                     discarded, no reply) once this many DATA bytes arrived
                     without the end marker; `stalled_at` records when
      read_delay     seconds to sleep before each recv (16 KiB each): a slow
                     reader
      tls_context    an ssl.SSLContext (server side): EHLO offers STARTTLS
                     and STARTTLS runs the handshake with it
      starttls_reply a reply line for STARTTLS instead of "220" (a refusal)
      starttls_inject bytes sent in plaintext right after the 220: a server
                     (or a man in the middle) injecting replies
      starttls_garbage  the answer to the ClientHello: bytes that are not a
                     TLS handshake (then the sink closes)
      starttls_stall after the 220, read the ClientHello and answer nothing
    tls_sessions records (conn_id, version, cipher, resumed) per handshake;
    tls_failures the handshakes that failed; tls_pipelined the connections
    whose client sent bytes after STARTTLS before the handshake (RFC 3207
    forbids it).
    Every message whose end of data arrived is recorded in `all`; those that
    got a 250 are in `messages` (the ones the sink "accepted").
    """

    def __init__(self, port=None, lmtp=False, hostname="sink.test", size=52428800,
                 idle_timeout=120.0, smtputf8=False, rcvbuf=None, host=HOST):
        self.host = host             # another loopback address (127.0.0.3) for a second server
        self.port = port or free_port()
        self.rcvbuf = rcvbuf         # SO_RCVBUF of its connections (a slow reader's kernel
                                     # buffer stays small), or None for the system's
        self.smtputf8 = smtputf8     # advertise SMTPUTF8 in the EHLO reply
        self.lmtp = lmtp
        self.hostname = hostname
        self.size = size
        self.idle_timeout = idle_timeout
        self.rcpt_replies = {}
        self.mail_reply = None
        self.data_reply = None
        self.lmtp_replies = {}
        self.data_delay = 0.0
        self.command_delay = 0.0
        self.drop_after_data_bytes = None
        self.drop_times = None       # how many messages drop_after_data_bytes drops (None: all)
        self.drop_at_eod = False
        self.fail_at = {}            # {"MAIL": "close" | "silent", ...}
        self.stall_after_data_bytes = None
        self.stalled_at = None       # time.monotonic() when a stall began
        self.failed_at = []          # (time.monotonic(), verb, mode) of each fault acted out;
                                     # drop_after_data_bytes adds (t, "BODY", "drop")
        self.read_delay = 0.0        # seconds to sleep before each recv: a slow reader
        self.tls_context = None
        self.starttls_reply = None
        self.starttls_inject = b""
        self.starttls_garbage = b""
        self.starttls_stall = False
        self.tls_sessions = []
        self.tls_failures = []
        self.tls_pipelined = []
        self.ehlos = []              # (conn_id, tls) of every EHLO/LHLO
        self.cond = threading.Condition()
        self.messages = []
        self.all = []
        self.connections = 0
        self.max_open = 0           # most connections open at once
        self.eod_arrived = 0        # ends of data seen, before the sink replies
        self.commands = []          # (conn_id, line) for every command, bounded
        self.reads = []             # (conn_id, bytes) of every recv, bounded: shows pipelining
        self._listener = None
        self._thread = None
        self._stop = threading.Event()
        self._conns = {}
        self._conn_seq = 0

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    # -- lifecycle

    def start(self):
        assert self._listener is None, "sink already running"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)   # inherited by accept()
        deadline = time.monotonic() + 5
        while True:
            try:
                s.bind((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    s.close()
                    raise
                time.sleep(0.05)
        s.listen(1024)
        s.settimeout(0.1)
        self._stop = threading.Event()
        self._listener = s
        self._thread = threading.Thread(target=self._accept_loop, args=(s, self._stop),
                                        name="sink-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close the listener and every connection (no reply, like a crash)."""
        if self._listener is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        self._listener = None
        with self.cond:
            conns = list(self._conns.values())
        for c, t in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c, t in conns:
            t.join(5)

    def restart(self):
        self.stop()
        return self.start()

    @property
    def running(self):
        return self._listener is not None

    # -- queries

    def find(self, msgid, accepted_only=True):
        with self.cond:
            src = self.messages if accepted_only else self.all
            return [m for m in src if m.message_id == msgid]

    def accepted_ids(self):
        with self.cond:
            return [m.message_id for m in self.messages]

    def wait_for(self, pred, timeout=10.0):
        """Wait until pred(sink) is true (checked under the lock)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def wait_message(self, msgid, timeout=10.0):
        ok = self.wait_for(lambda s: any(m.message_id == msgid for m in s.messages), timeout)
        return self.find(msgid)[0] if ok else None

    # -- server

    def _accept_loop(self, lsock, stop):
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.01)
                continue
            with self.cond:
                self._conn_seq += 1
                cid = self._conn_seq
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(c, cid, stop), name="sink-%d" % cid,
                                 daemon=True)
            with self.cond:
                self._conns[cid] = (c, t)
                self.max_open = max(self.max_open, len(self._conns))
            t.start()

    def _serve(self, c, cid, stop):
        sess = None
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(0.2)
            sess = _SinkSession(self, c, cid, stop)
            sess.run()
        except OSError:
            pass
        finally:
            for sock in (c, sess.sock if sess else None):  # after STARTTLS, the TLS socket
                try:
                    if sock is not None:
                        sock.close()
                except OSError:
                    pass
            with self.cond:
                self._conns.pop(cid, None)
                self.cond.notify_all()

    def _record(self, msg, accepted):
        with self.cond:
            self.all.append(msg)
            if accepted:
                self.messages.append(msg)
            self.cond.notify_all()


class _Drop(Exception):
    pass


class _SinkSession:
    def __init__(self, sink, sock, cid, stop):
        self.sink, self.sock, self.cid, self.stop = sink, sock, cid, stop
        self.buf = bytearray()
        self.out = []
        self.helo = None
        self.tls = None
        self._reset()

    def _reset(self):
        self.mail_from = None
        self.mail_params = ""
        self.rcpts = []

    def send(self, line):
        self.out.append(line.encode() + b"\r\n")

    def flush(self):
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out = []

    def wait(self, seconds):
        if seconds and self.stop.wait(seconds):
            raise _Drop()

    def recv_more(self):
        idle = time.monotonic() + self.sink.idle_timeout
        while True:
            if self.stop.is_set():
                raise _Drop()
            if self.sink.read_delay:
                self.wait(self.sink.read_delay)
            try:
                d = self.sock.recv(16384 if self.sink.read_delay else 65536)
            except socket.timeout:
                if time.monotonic() > idle:
                    raise _Drop()
                continue
            if not d:
                raise _Drop()
            with self.sink.cond:
                if len(self.sink.reads) < 10000:
                    self.sink.reads.append((self.cid, bytes(d[:4096])))
            self.buf += d
            return

    def fault(self, verb):
        """Act out sink.fail_at[verb], if set: flush the replies owed for
        earlier commands, then close (raises _Drop) or go silent."""
        mode = self.sink.fail_at.get(verb)
        if not mode:
            return
        assert mode in ("close", "silent"), mode
        self.flush()
        with self.sink.cond:
            self.sink.failed_at.append((time.monotonic(), verb, mode))
            self.sink.cond.notify_all()
        if mode == "close":
            try:
                self.sock.shutdown(socket.SHUT_WR)   # FIN after the replies already sent
            except OSError:
                pass
            raise _Drop()
        self.buf.clear()
        idle = time.monotonic() + self.sink.idle_timeout
        while not self.stop.is_set() and time.monotonic() < idle:
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
        raise _Drop()

    def stall(self):
        """Stop reading: keep the connection, never reply (until stop() or
        idle_timeout)."""
        with self.sink.cond:
            self.sink.stalled_at = time.monotonic()
            self.sink.cond.notify_all()
        idle = time.monotonic() + self.sink.idle_timeout
        while time.monotonic() < idle:
            if self.stop.wait(0.1):
                break
        raise _Drop()

    def run(self):
        try:
            self.send("220 %s ESMTP sink" % self.sink.hostname)
            self.flush()
            while True:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    self.flush()
                    if len(self.buf) > 65536:
                        raise _Drop()
                    self.recv_more()
                    continue
                line = bytes(self.buf[:i]).decode("utf-8", "replace")
                del self.buf[:i + 2]
                with self.sink.cond:
                    if len(self.sink.commands) < 100000:
                        self.sink.commands.append((self.cid, line))
                self.fault(line.partition(" ")[0].upper())
                if self.sink.command_delay:
                    self.flush()
                    self.wait(self.sink.command_delay)
                if not self.command(line):
                    self.flush()
                    return
        except _Drop:
            return

    def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        sink = self.sink
        if verb in ("EHLO", "LHLO", "HELO"):
            if (verb == "LHLO") != sink.lmtp:
                self.send("500 5.5.1 wrong greeting for this protocol")
                return True
            self.helo = arg.strip()
            self._reset()
            with sink.cond:
                sink.ehlos.append((self.cid, self.tls is not None))
            if verb == "HELO":
                self.send("250 %s" % sink.hostname)
            else:
                self.send("250-%s" % sink.hostname)
                self.send("250-PIPELINING")
                self.send("250-8BITMIME")
                self.send("250-SIZE %d" % sink.size)
                if sink.smtputf8:
                    self.send("250-SMTPUTF8")
                if sink.tls_context is not None and self.tls is None:
                    self.send("250-STARTTLS")
                self.send("250 ENHANCEDSTATUSCODES")
        elif verb == "MAIL":
            if self.mail_from is not None:
                self.send("503 5.5.1 nested MAIL")
            elif sink.mail_reply:
                self.send(sink.mail_reply)
            else:
                self.mail_from, self.mail_params = _path(arg)
                self.send("250 2.1.0 ok")
        elif verb == "RCPT":
            path, _ = _path(arg)
            r = sink.rcpt_replies.get(path.lower())
            if self.mail_from is None:
                self.send("503 5.5.1 need MAIL")
            elif r:
                self.send(r)
            else:
                self.rcpts.append(path)
                self.send("250 2.1.5 ok")
        elif verb == "DATA":
            if self.mail_from is None or not self.rcpts:
                self.send("503 5.5.1 need RCPT")
                return True
            self.send("354 go ahead")
            self.flush()
            self.data()
        elif verb == "STARTTLS":
            self.starttls()
        elif verb == "RSET":
            self._reset()
            self.send("250 2.0.0 ok")
        elif verb == "NOOP":
            self.send("250 2.0.0 ok")
        elif verb == "QUIT":
            self.send("221 2.0.0 bye")
            return False
        else:
            self.send("502 5.5.1 not implemented")
        return True

    def starttls(self):
        sink = self.sink
        if sink.tls_context is None or self.tls is not None:
            self.send("503 5.5.1 no STARTTLS here")
            return
        if sink.starttls_reply:
            self.send(sink.starttls_reply)
            return
        if self.buf:
            with sink.cond:
                sink.tls_pipelined.append(self.cid)
        self.send("220 2.0.0 ready to start TLS")
        if sink.starttls_inject:   # in the same segment as the 220
            self.out.append(sink.starttls_inject)
        self.flush()
        if sink.starttls_stall:     # the ClientHello read, and no answer ever
            self.buf.clear()
            self.recv_more()
            self.stall()
        if sink.starttls_garbage:   # the answer to the client's ClientHello
            self.buf.clear()
            self.recv_more()
            self.sock.sendall(sink.starttls_garbage)
            raise _Drop()
        self.buf.clear()
        self.sock.settimeout(10)
        try:
            tls = sink.tls_context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with sink.cond:
                sink.tls_failures.append((self.cid, str(e)))
                sink.cond.notify_all()
            raise _Drop()
        tls.settimeout(0.2)
        self.sock = tls
        with sink.cond:
            if self.cid in sink._conns:   # stop() shuts the TLS socket down now
                sink._conns[self.cid] = (tls, sink._conns[self.cid][1])
        self.tls = (tls.version(), tls.cipher()[0])
        self.helo = None
        self._reset()
        with sink.cond:
            sink.tls_sessions.append((self.cid, tls.version(), tls.cipher()[0], tls.session_reused))
            sink.cond.notify_all()

    def data(self):
        sink = self.sink
        scan = 0
        while True:
            if (sink.drop_after_data_bytes is not None and len(self.buf) >= sink.drop_after_data_bytes
                    and sink.drop_times != 0):
                with sink.cond:
                    if sink.drop_times is not None:
                        sink.drop_times -= 1
                    sink.failed_at.append((time.monotonic(), "BODY", "drop"))
                    sink.cond.notify_all()
                raise _Drop()
            if sink.stall_after_data_bytes is not None and len(self.buf) >= sink.stall_after_data_bytes:
                self.stall()
            if self.buf.startswith(b".\r\n"):
                wire, rest = b"", 3
                break
            j = self.buf.find(b"\r\n.\r\n", scan)
            if j >= 0:
                wire, rest = bytes(self.buf[:j + 2]), j + 5
                break
            scan = max(0, len(self.buf) - 4)
            self.recv_more()
        del self.buf[:rest]
        msg = SinkMessage(self.cid, self.helo, self.mail_from, self.mail_params, self.rcpts,
                          wire, None)
        msg.tls = self.tls
        with sink.cond:
            sink.eod_arrived += 1
            sink.cond.notify_all()
        self.fault("EOD")
        if sink.drop_at_eod:
            msg.reply = "(dropped)"
            sink._record(msg, False)
            raise _Drop()
        self.wait(sink.data_delay)
        if sink.lmtp:
            replies = [sink.lmtp_replies.get(r.lower(), "250 2.0.0 ok") for r in self.rcpts]
            msg.reply = replies
            ok_rcpts = [r for r, rep in zip(self.rcpts, replies) if rep.startswith("2")]
            accepted = bool(ok_rcpts)
            msg.rcpts = ok_rcpts or msg.rcpts
            self._finish(msg, accepted)
            for rep in replies:
                self.send(rep)
        else:
            r = sink.data_reply
            if callable(r):
                r = r(msg)
            r = r or "250 2.0.0 ok queued"
            msg.reply = r
            self._finish(msg, r.startswith("2"))
            self.send(r)
        self.flush()
        self._reset()

    def _finish(self, msg, accepted):
        self.sink._record(msg, accepted)


# ---------------------------------------------------------------- client


class Closed(Exception):
    """The server closed the connection."""


class Reply:
    def __init__(self, lines):
        self.lines = lines
        self.code = int(lines[-1][:3])
        first = lines[0][4:]
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", first)
        self.esc = m.group(1) if m else None
        self.text = "\n".join(l[4:] for l in lines)

    def __repr__(self):
        return "<Reply %s>" % " | ".join(self.lines)

    def __str__(self):
        return "\n".join(self.lines)

    def ok(self):
        return 200 <= self.code < 400

    def is_(self, code, esc=None):
        return self.code == code and (esc is None or self.esc == esc)


class Client:
    """A raw SMTP client: exact bytes out, replies parsed, nothing hidden."""

    def __init__(self, port, timeout=10.0, host=HOST, source=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.greeting = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        """One receive into self.buf, waiting at most until deadline
        (monotonic): how many bytes came, 0 when the server closed (or
        reset) the connection, None when the time ran out."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return 0
        self.buf += d
        return len(d)

    def _fill_or_raise(self, deadline, what):
        """_fill, raising socket.timeout (no `what` in time) or Closed."""
        got = self._fill(deadline)
        if got is None:
            raise socket.timeout("no %s within the time limit (have %r)" % (what, bytes(self.buf)))
        if not got:
            raise Closed("connection closed by the server (pending %r)" % bytes(self.buf))

    def _line(self, deadline):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line.rstrip(b"\r\n").decode("utf-8", "replace")
            self._fill_or_raise(deadline, "reply")

    def reply(self, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        lines = []
        for _ in range(1000):
            line = self._line(deadline)
            if len(line) < 3 or not line[:3].isdigit():
                raise AssertionError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)
        raise AssertionError("reply with over 1000 lines")

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n")
        return self.reply(timeout)

    def greet(self, timeout=None):
        self.greeting = self.reply(timeout)
        return self.greeting

    def ehlo(self, name="client.test"):
        if self.greeting is None:
            g = self.greet()
            assert g.code == 220, g
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def wait_closed(self, timeout=5.0):
        """True if the server closes the connection within timeout (data
        arriving before the close is collected in self.buf)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self._fill(deadline)
            if got is None:
                return False
            if not got:
                return True

    def raw_reply(self, timeout=None):
        """The exact bytes of one complete reply (every line, CRLFs
        included), taken from the buffer; socket.timeout or Closed when it
        does not come whole."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        pos = 0
        for _ in range(100000):
            i = self.buf.find(b"\n", pos)
            if i >= 0:
                line = bytes(self.buf[pos:i + 1])
                if len(line) < 5 or not line[:3].isdigit():
                    raise AssertionError("malformed reply line %r" % line)
                pos = i + 1
                if line[3:4] != b"-":
                    out = bytes(self.buf[:pos])
                    del self.buf[:pos]
                    return out
                continue
            self._fill_or_raise(deadline, "whole reply")
        raise AssertionError("reply with too many lines")

    def recv_raw(self, nbytes, timeout=5.0):
        """Raw bytes: wait until self.buf holds at least nbytes (or the
        timeout passes, or the server closes), then take and return up to
        nbytes from it. Fewer bytes back means the time ran out or the
        connection closed."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if len(self.buf) >= nbytes or not self._fill(deadline):
                break
        out = bytes(self.buf[:nbytes])
        del self.buf[:nbytes]
        return out

    def recv_quiet(self, seconds=1.0):
        """Every byte that arrives within `seconds` (plus anything already
        buffered), taken from the buffer. Stops early if the server closes."""
        deadline = time.monotonic() + seconds
        for _ in range(100000):
            if not self._fill(deadline):
                break
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def rest_replies(self, timeout=5.0):
        """Every reply until the server closes (bounded)."""
        out = []
        deadline = time.monotonic() + timeout
        for _ in range(100):
            try:
                out.append(self.reply(max(0.01, deadline - time.monotonic())))
            except (Closed, socket.timeout, ConnectionResetError):
                break
        return out


class Result:
    def __init__(self):
        self.stage = None     # where it ended: greeting ehlo mail rcpt data eod
        self.final = None     # the reply that decided
        self.rcpt = []        # every RCPT reply
        self.elapsed = None   # seconds from the final dot to the final reply

    @property
    def code(self):
        return self.final.code if self.final else None

    @property
    def delivered(self):
        return self.stage == "eod" and self.final.code == 250

    def __repr__(self):
        return "<Result stage=%s final=%r rcpt=%r>" % (self.stage, self.final, self.rcpt)


def transact(c, mail_from, rcpts, msg, mail_params="", stuff=True):
    """One transaction on an open session (after EHLO), step by step."""
    res = Result()
    r = c.cmd("MAIL FROM:<%s>%s" % (mail_from, (" " + mail_params) if mail_params else ""))
    res.stage, res.final = "mail", r
    if r.code != 250:
        return res
    for rc in rcpts:
        r = c.cmd("RCPT TO:<%s>" % rc)
        res.rcpt.append(r)
    if not any(r.code == 250 for r in res.rcpt):
        res.stage, res.final = "rcpt", res.rcpt[-1] if res.rcpt else None
        c.cmd("RSET")
        return res
    r = c.cmd("DATA")
    res.stage, res.final = "data", r
    if r.code != 354:
        return res
    c.send((dot_stuff(msg) if stuff else msg) + b".\r\n")
    t0 = time.monotonic()
    res.stage, res.final = "eod", c.reply()
    res.elapsed = time.monotonic() - t0
    return res


def send_mail(port, mail_from="sender@src.test", rcpts=("user@example.com",), msg=None,
              mail_params="", helo="client.test", timeout=15.0):
    """A whole session: greeting, EHLO, one transaction, QUIT. Never raises
    for SMTP refusals; returns a Result (stage 'connect' on socket errors)."""
    res = Result()
    msg = msg if msg is not None else make_message()
    try:
        with Client(port, timeout=timeout) as c:
            g = c.greet()
            if g.code != 220:
                res.stage, res.final = "greeting", g
                return res
            r = c.cmd("EHLO " + helo)
            if r.code != 250:
                res.stage, res.final = "ehlo", r
                return res
            res = transact(c, mail_from, list(rcpts), msg, mail_params)
            try:
                c.cmd("QUIT", timeout=5)
            except (Closed, OSError):
                pass
            return res
    except Closed as e:
        res.stage = res.stage or "closed"
        res.error = str(e)
        return res
    except OSError as e:
        res.stage = "connect" if res.stage is None else res.stage
        res.error = repr(e)
        return res


# ---------------------------------------------------------------- gateway


class StartError(Exception):
    pass


def _pdeathsig():
    # Die with the test runner if it is killed, so no gateway outlives it.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Gateway:
    """build/mxgate in the foreground: flags from a dict, stderr to a file."""

    def __init__(self, opts, log_path, cwd=None, env=None, binary=BINARY):
        self.opts = dict(opts)
        # Gateways run side by side here: the operations endpoint only where
        # a test gives it its own port.
        self.opts.setdefault("http_listen", "")
        # Started as root, mxgate would drop to nobody, who cannot reach the
        # tests' 0700 temporary directories: keep root unless a test says.
        self.opts.setdefault("user", "root")
        self.log_path = log_path
        self.cwd = cwd
        self.binary = binary
        self.env = env
        self.proc = None
        listen = self.opts.get("listen") or "%s:%d" % (HOST, 2525)
        self.port = int(listen.rsplit(":", 1)[1])
        self.drain_timeout = float(self.opts.get("drain_timeout", 30))
        self.stopped_rc = None

    def argv(self):
        argv = [self.binary]
        for k, v in self.opts.items():
            if v is None:
                continue
            argv += ["--" + k.replace("_", "-"), str(v)]
        return argv

    def start(self, ready_timeout=10.0):
        self.launch()
        self.wait_ready(ready_timeout)
        return self

    def launch(self):
        """Start the process without waiting for it to listen (start() is
        launch() and wait_ready())."""
        if not os.path.exists(self.binary):
            raise StartError("%s does not exist: build it first (make)" % self.binary)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXGATE_")}
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=self.cwd, env=env,
                                     preexec_fn=_pdeathsig)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    def wait_log(self, pattern, timeout=5.0):
        """The first log line matching the regex, waiting up to timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def log_records(self, strict=True, canonical=False):
        """Every log line parsed as logfmt (see logfmt.py): a list of dicts.
        strict: a line that does not parse raises LogfmtError; otherwise such
        lines are skipped."""
        import logfmt
        out = []
        for line in self.log().splitlines():
            if not line:
                continue
            try:
                out.append(logfmt.parse(line, canonical))
            except logfmt.LogfmtError:
                if strict:
                    raise
        return out

    def wait_record(self, pred, timeout=5.0, strict=True):
        """The first parsed log line for which pred(dict) is true, waiting up
        to timeout; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.log_records(strict=strict):
                if pred(rec):
                    return rec
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def proxy_hello(self):
        """What a balancer's check sends first on a PROXY listener (a header
        that keeps the socket's address), or b"" where none is expected
        from 127.0.0.1."""
        mode = str(self.opts.get("proxy_protocol", "off"))
        trusted = str(self.opts.get("proxy_trusted", "") or "")
        if mode == "off":
            return b""
        if trusted:
            import ipaddress
            me = ipaddress.ip_address(HOST)
            nets = [ipaddress.ip_network(t.strip()) for t in trusted.split(",") if t.strip()]
            if not any(me in n for n in nets):
                return b""
        if mode == "v2":
            return b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # LOCAL
        return b"PROXY UNKNOWN\r\n"

    def wait_ready(self, timeout=10.0):
        """Until the port answers with a 220 greeting (then QUIT)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError("mxgate exited with %s before listening:\n%s"
                                 % (self.proc.returncode, self.log_tail()))
            try:
                with Client(self.port, timeout=max(0.1, min(2.0, deadline - time.monotonic()))) as c:
                    hello = self.proxy_hello()
                    if hello:
                        c.send(hello)
                    g = c.greet()
                    if g.code == 220:
                        try:
                            c.cmd("QUIT", timeout=2)
                            c.wait_closed(2)
                        except (Closed, OSError):
                            pass
                        return
                    last = g
            except (OSError, Closed) as e:
                last = e
            time.sleep(0.05)
        self.kill()
        raise StartError("mxgate not ready on port %d within %.0f s (last: %r):\n%s"
                         % (self.port, timeout, last, self.log_tail()))

    def signal(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """SIGTERM, then the exit code within drain_timeout + 5 s (None if it
        had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(self.drain_timeout + 5)
        if rc is None:
            self.kill()
        self.stopped_rc = rc
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        try:
            self._log.close()
        except Exception:
            pass

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None
