"""
dnsserver - a real DNS server for the tests: unbound, serving fixed records
on 127.0.0.1 (or ::1) and a free port, and dns_query(), a small client.

Nothing is ever resolved outside: all records form one root zone that
unbound's iterator reads in place of the root servers (auth-zone ".",
for-upstream, no fallback), so the client gets what a recursive resolver
gives: CNAMEs chased (a loop is SERVFAIL), NXDOMAIN or NODATA with the SOA,
the TTLs as given (serve-original-ttl), real packets over UDP and TCP (long
TXT answers truncate over UDP and are fetched again over TCP, as in life).

    with DnsServer(tmp_path, {"example.com": [("TXT", "v=spf1 -all")]},
                   servfail=["broken.example.com"]) as dns:
        rcode, answers = dns_query(dns.addr, "example.com", "TXT")

SERVFAIL is a real SERVFAIL (not REFUSED), answered at once: each servfail
name is a `typetransparent` local zone (its own records, if any, answered
from local data) with a stub delegation whose only server address unbound is
configured never to query (do-not-query-localhost), so the iterator gives
up on the spot. pause()/resume() (SIGSTOP/SIGCONT) make a server that does
not answer at all, for real timeouts.

query_count() reads unbound's own log (log-queries: yes, one line per query
received, flushed as written); the fixture's start-up probe is not counted.

Everything the server writes (config, log) lives in workdir. Every wait is
bounded; stop() always ends the process.
"""
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
PROBE_NAME = "fixture-probe.dnsserver.invalid"   # start()'s readiness query; not counted

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
         "AAAA": 28, "SRV": 33, "SPF": 99, "ANY": 255}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED"}


def unbound_available():
    return os.path.exists(UNBOUND) and os.access(UNBOUND, os.X_OK)


# ---------------------------------------------------------------- a client


def _split_addr(addr):
    """'127.0.0.1:53' or '[::1]:53' -> (family, host, port)."""
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
        return socket.AF_INET6, host, int(port)
    host, _, port = addr.rpartition(":")
    return socket.AF_INET, host, int(port)


def _labels(name):
    """Wire labels of a presentation name (no escapes: each label taken as is)."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    name = name.rstrip(b".")
    return [l for l in name.split(b".")] if name else []


def _encode_name(name):
    out = b""
    for l in _labels(name):
        if not 0 < len(l) < 64:
            raise ValueError("bad label %r in %r" % (l, name))
        out += bytes([len(l)]) + l
    return out + b"\0"


def _read_name(msg, off, depth=0):
    """(name as text with a trailing dot, offset after the name)."""
    labels = []
    end = None
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode("utf-8", "backslashreplace"))
        off += n
    return ".".join(labels) + ".", (end if end is not None else off)


def _rdata(msg, off, rtype, rdlen):
    rd = msg[off:off + rdlen]
    if rtype == 1:
        return socket.inet_ntop(socket.AF_INET, rd)
    if rtype == 28:
        return socket.inet_ntop(socket.AF_INET6, rd)
    if rtype in (2, 5, 12):
        return _read_name(msg, off)[0]
    if rtype == 15:
        return "%d %s" % (struct.unpack("!H", rd[:2])[0], _read_name(msg, off + 2)[0])
    if rtype in (16, 99):
        strings, i = [], 0
        while i < len(rd):
            strings.append(bytes(rd[i + 1:i + 1 + rd[i]]))
            i += 1 + rd[i]
        return tuple(strings)
    return bytes(rd)


def parse_reply(msg):
    """(id, flags, rcode, [(name, type, ttl, value)] of the answer section)."""
    qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        name, off = _read_name(msg, off)
        rtype, _, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        answers.append((name, TYPE_NAMES.get(rtype, rtype), ttl, _rdata(msg, off, rtype, rdlen)))
        off += rdlen
    return qid, flags, flags & 0xF, answers


def dns_query(addr, name, qtype, timeout=2.0, tcp=False):
    """Ask addr ("127.0.0.1:PORT" or "[::1]:PORT") for name/qtype, recursion
    desired, over UDP (and again over TCP if the UDP answer is truncated, or
    only over TCP with tcp=True). Returns (rcode, answers): rcode an int (0
    NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED; RCODE_NAMES has the names),
    answers a list of (type, value, ttl) in the answer section's order, type
    a name ("A", "CNAME", ...). Values: A/AAAA/CNAME/PTR/NS text (names with a
    trailing dot), MX "prio host.", TXT/SPF a tuple of bytes (one per
    character-string). Raises socket.timeout when nothing answers in time."""
    family, host, port = _split_addr(addr)
    qid = random.randrange(1 << 16)
    t = TYPES[qtype.upper()] if isinstance(qtype, str) else int(qtype)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + \
        struct.pack("!HH", t, 1)
    deadline = time.monotonic() + timeout
    if not tcp:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            s.send(query)
            for _ in range(100):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("no DNS answer from %s in %.1f s" % (addr, timeout))
                s.settimeout(left)
                try:
                    msg = s.recv(65535)
                except ConnectionRefusedError:
                    raise socket.timeout("DNS port %s refused (nothing listens)" % addr)
                if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
                    break
            else:
                raise socket.timeout("no matching DNS answer from %s" % addr)
            _, flags, rcode, answers = parse_reply(msg)
            if not flags & 0x0200:   # TC
                return rcode, [(ty, v, ttl) for _, ty, ttl, v in answers]
    left = max(0.01, deadline - time.monotonic())
    with socket.create_connection((host, port), timeout=left) as s:
        s.sendall(struct.pack("!H", len(query)) + query)
        buf = b""
        for _ in range(10000):
            if len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no DNS answer over TCP from %s" % addr)
            s.settimeout(left)
            d = s.recv(65535)
            if not d:
                raise ConnectionError("DNS server %s closed the TCP connection" % addr)
            buf += d
        _, _, rcode, answers = parse_reply(buf[2:2 + struct.unpack("!H", buf[:2])[0]])
        return rcode, [(ty, v, ttl) for _, ty, ttl, v in answers]


# ---------------------------------------------------------------- the server

_SAFE = re.compile(rb"[A-Za-z0-9_-]")


def _escape_octets(b, safe_extra=b""):
    """Presentation escapes (\\DDD) for every octet that is not plainly safe in
    both unbound's config lexer and its RR parser."""
    return "".join(chr(c) if (_SAFE.match(bytes([c])) or bytes([c]) in safe_extra)
                   else "\\%03d" % c for c in b)


def _owner(name, keep_case=False):
    """A name in presentation form: escaped octets, trailing dot; lower case
    unless keep_case (targets keep theirs: case tests look at them)."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    name = name.strip().rstrip(b".")
    if not keep_case:
        name = name.lower()
    if not name:
        return "."
    return ".".join(_escape_octets(l) for l in name.split(b".")) + "."


def _txt_strings(value):
    """A TXT value: a string longer than 255 octets becomes several strings;
    a list is the strings of one record as given."""
    if isinstance(value, (list, tuple)):
        parts = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in value]
    else:
        b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        parts = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
    for p in parts:
        if len(p) > 255:
            raise ValueError("TXT string over 255 octets: %r" % p[:40])
    if not parts:
        return "\\# 0"      # a TXT record with no strings at all (illegal, but seen)
    return " ".join('"%s"' % _escape_octets(p, b" .:/=~+!?%@,*") for p in parts)


def _rdata_text(rtype, value):
    if rtype in ("TXT", "SPF"):
        return _txt_strings(value)
    if rtype == "A":
        return str(ipaddress.IPv4Address(value))
    if rtype == "AAAA":
        return str(ipaddress.IPv6Address(value))
    if rtype == "MX":
        if isinstance(value, (list, tuple)):
            prio, host = value
        else:
            prio, _, host = str(value).strip().partition(" ")
        return "%d %s" % (int(prio), _owner(host.strip(), True))
    if rtype in ("PTR", "CNAME", "NS"):
        return _owner(value, True)
    return str(value)    # anything else in presentation form, as given


def _under(name, parent):
    return name == parent or name.endswith("." + parent) or parent == "."


class DnsServer:
    """unbound on 127.0.0.1 (or ::1 with ipv6=True) and a free port.

    records   {name: [(type, value) or (type, value, ttl), ...]}; names without
              the trailing dot, any case. Types: A, AAAA, TXT, SPF, MX, PTR,
              CNAME, NS (others are passed to unbound in presentation form).
              TXT/SPF values longer than 255 octets become several strings of
              one record; a list value is the strings of one record. MX is
              "10 mx.example.com" or (10, "mx.example.com"). TTL defaults to 300.
    servfail  names for which the server answers SERVFAIL at once, names
              below them included. Records given for such a name (or a name
              below it) are still answered for their own types; every other
              type gets SERVFAIL. A name with records below a servfail name
              and not itself in servfail answers normally (NODATA for types
              it lacks). This is how the RFC 7208 suite's TIMEOUT is served.
    """

    def __init__(self, workdir, records, servfail=(), ipv6=False):
        self.workdir = os.path.abspath(str(workdir))
        self.records = records
        self.servfail = list(servfail)
        self.ipv6 = ipv6
        self.host = "::1" if ipv6 else "127.0.0.1"
        self.port = None
        self.proc = None
        self.paused = False
        tag = "%d-%d" % (os.getpid(), time.monotonic_ns())
        self.conf_path = os.path.join(self.workdir, "unbound-%s.conf" % tag)
        self.log_path = os.path.join(self.workdir, "unbound-%s.log" % tag)
        self.zone_path = os.path.join(self.workdir, "unbound-%s.zone" % tag)
        self.err_path = os.path.join(self.workdir, "unbound-%s.stderr" % tag)

    @property
    def addr(self):
        return ("[%s]:%d" if self.ipv6 else "%s:%d") % (self.host, self.port)

    # -- config

    def _rr_lines(self, names=None):
        """[(owner, presentation RR)] of the records (of the given names only)."""
        out = []
        for name, entries in self.records.items():
            owner = _owner(name)
            if names is not None and owner not in names:
                continue
            for e in entries:
                if len(e) == 3:
                    rtype, value, ttl = e
                else:
                    (rtype, value), ttl = e, 300
                rtype = rtype.upper()
                out.append((owner, "%s %d IN %s %s" % (owner, int(ttl), rtype,
                                                       _rdata_text(rtype, value))))
        return out

    def _zone_file(self):
        lines = [". 300 IN SOA ns.dnsserver.invalid. hostmaster.dnsserver.invalid. "
                 "1 3600 600 86400 300",
                 ". 300 IN NS ns.dnsserver.invalid."]
        lines += [rr for _, rr in self._rr_lines() if not rr.startswith(". ")]
        return "\n".join(lines) + "\n"

    def _config(self, port, zone_path):
        ip6 = "yes" if self.ipv6 else "no"
        conf = [
            "server:",
            '  username: ""',
            '  chroot: ""',
            '  directory: "%s"' % self.workdir,
            '  pidfile: ""',
            "  do-daemonize: no",
            "  use-syslog: no",
            '  logfile: "%s"' % self.log_path,
            "  log-queries: yes",
            "  verbosity: 1",
            "  num-threads: 1",
            "  interface: %s" % self.host,
            "  port: %d" % port,
            "  do-ip4: %s" % ("no" if self.ipv6 else "yes"),
            "  do-ip6: %s" % ip6,
            "  do-udp: yes",
            "  do-tcp: yes",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            "  access-control: ::1/128 allow",
            '  module-config: "iterator"',
            "  qname-minimisation: no",
            "  rrset-roundrobin: no",        # answers in the order given: runs repeat
            "  serve-original-ttl: yes",     # answers carry the TTLs given, not aged ones
            "  msg-cache-size: 1m",
            "  rrset-cache-size: 1m",
            "  outgoing-range: 32",
            "  num-queries-per-thread: 256",
            "  edns-buffer-size: 1232",
            # The servfail stubs name 127.0.0.1, which this forbids querying:
            # the iterator finds no usable server and answers SERVFAIL at once.
            "  do-not-query-localhost: yes",
        ]
        sf = [_owner(n) for n in self.servfail]
        carve = set(o for o in map(_owner, self.records)
                    if o not in sf and any(_under(o, z) for z in sf))
        for z in sf:
            conf.append('  local-zone: "%s" typetransparent' % z)
        for o in sorted(carve):
            conf.append('  local-zone: "%s" static' % o)
        # unbound's default local zones (test nets, RFC 1918 and documentation
        # reverse zones, test., ...) would answer NXDOMAIN for names given
        # here and the empty names above them: a transparent zone for each
        # lets the query through to the records.
        through = set()
        for o in set(map(_owner, self.records)) - set(sf) - carve:
            labels = o.rstrip(".").split(".")
            for i in range(len(labels)):
                s = ".".join(labels[i:]) + "."
                if s != "." and not any(_under(s, z) for z in sf):
                    through.add(s)
        for o in sorted(through - carve):
            conf.append('  local-zone: "%s" transparent' % o)
        for _, rr in self._rr_lines(set(sf) | carve):
            conf.append("  local-data: '%s'" % rr)
        # The whole name space is this one zone, consulted by the iterator in
        # place of the root servers, so CNAMEs are chased and loops end in
        # SERVFAIL as with a real recursive resolver; nothing is asked outside.
        conf += ["auth-zone:", '  name: "."', '  zonefile: "%s"' % zone_path,
                 "  for-downstream: no", "  for-upstream: yes", "  fallback-enabled: no"]
        for z in sf:
            conf += ["stub-zone:", '  name: "%s"' % z, "  stub-addr: 127.0.0.1@9",
                     "  stub-prime: no"]
        return "\n".join(conf) + "\n"

    # -- lifecycle

    def _free_port(self):
        """A port free for both UDP and TCP on self.host right now."""
        fam = socket.AF_INET6 if self.ipv6 else socket.AF_INET
        for _ in range(50):
            u = socket.socket(fam, socket.SOCK_DGRAM)
            t = socket.socket(fam, socket.SOCK_STREAM)
            try:
                u.bind((self.host, 0))
                port = u.getsockname()[1]
                t.bind((self.host, port))
                return port
            except OSError:
                continue
            finally:
                u.close()
                t.close()
        raise RuntimeError("no port free for UDP and TCP on %s" % self.host)

    def start(self, timeout=10.0):
        """Start unbound and wait (at most timeout seconds) until it answers a
        query. Returns self."""
        assert self.proc is None, "DNS server already running"
        if not unbound_available():
            raise RuntimeError("unbound is not installed (%s)" % UNBOUND)
        os.makedirs(self.workdir, exist_ok=True)
        err = ""
        for _ in range(3):     # a port taken between the check and the bind: try another
            self.port = self._free_port()
            with open(self.zone_path, "w") as f:
                f.write(self._zone_file())
            with open(self.conf_path, "w") as f:
                f.write(self._config(self.port, self.zone_path))
            with open(self.log_path, "w"):
                pass
            with open(self.err_path, "w") as err_file:
                self.proc = subprocess.Popen([UNBOUND, "-d", "-c", self.conf_path],
                                             stdin=subprocess.DEVNULL, stdout=err_file,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            try:
                if self._wait_ready(timeout):
                    return self
            except BaseException:
                self.stop()
                raise
            err = self.log_tail()
            rc = self.proc.poll()
            self.stop()
            if rc is None or "bind" not in err:
                break
        raise RuntimeError("unbound did not start on %s:\n%s" % (self.addr, err))

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                dns_query(self.addr, PROBE_NAME, "A", timeout=0.2)
                return True
            except (socket.timeout, OSError):
                time.sleep(0.02)
        return False

    def stop(self):
        """End unbound (SIGTERM, then SIGKILL after 3 s). Safe to call twice."""
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if self.paused:
                p.send_signal(signal.SIGCONT)
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)
        except ProcessLookupError:
            pass
        self.paused = False

    def pause(self):
        """SIGSTOP: the server stops answering (queries wait in its socket)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        """SIGCONT: it answers again, queued queries included."""
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what it saw

    _QUERY_RE = re.compile(r" info: (\S+) (.+) (\S+) (\S+)$")

    def queries(self):
        """[(name, type)] of every query received so far (the probe left out),
        from unbound's log, names with a trailing dot as unbound logs them."""
        out = []
        try:
            with open(self.log_path, "r", errors="replace") as f:
                for line in f:
                    m = self._QUERY_RE.search(line.rstrip("\n"))
                    if not m or m.group(4) != "IN":
                        continue
                    try:
                        ipaddress.ip_address(m.group(1))
                    except ValueError:
                        continue
                    if m.group(2).rstrip(".").lower() == PROBE_NAME:
                        continue
                    out.append((m.group(2), m.group(3)))
        except FileNotFoundError:
            pass
        return out

    def query_count(self):
        """How many queries the server has received so far (not counting the
        start-up probe). A query sent while paused counts once it is read."""
        return len(self.queries())

    def log_tail(self, n=30):
        """The last n lines of unbound's stderr and of its log."""
        out = []
        for p in (self.err_path, self.log_path):
            try:
                with open(p, "r", errors="replace") as f:
                    out += f.readlines()[-n:]
            except FileNotFoundError:
                pass
        return "".join(out)
