#!/usr/bin/env python3
"""
wirefuzz.py - a client-side wire fuzzer: attacks the real gateway over TCP.

Run from the repository root, after `make build/asan/mxgate`:

  30-second smoke run (for make test):
    python3 tests/fuzz/wirefuzz.py --seconds 30
  10-minute run (for make fuzz):
    python3 tests/fuzz/wirefuzz.py --seconds 600
  Replay one failing session alone (its seed is in the transcript), 20 times:
    python3 tests/fuzz/wirefuzz.py --replay SESSION_SEED --repeat 20
  The same run again (same session seeds; not the same timing):
    python3 tests/fuzz/wirefuzz.py --seconds 600 --seed RUN_SEED

Other options: --mxgate PATH (default build/asan/mxgate), --workers 1|2
(default 2), --delivery relay|spool|relay-then-spool (default relay; the
spool modes write under OUT/spool), --content (content_scanner = rspamd
against a fake rspamd that passes every message with headers to add and a
field to remove), --concurrency N (default 48), --downstream python|smtp-sink,
--out DIR (default build/wirefuzz), --stop-on-failure, -v; see --help.
Exit status: 0 no failures, 1 failures, 2 could not start, 130 interrupted.
It prints a progress line every 10 s; the last line is the summary:
  wirefuzz: N sessions, N commands, X MB sent, N replies checked, N failures in N s (X sessions/s, X commands/s)

What it runs: the gateway with --workers W --listen 127.0.0.1:<free port>
--hostname mx.wirefuzz.test --downstream <the sink> --relay-domains
example.com --command-timeout 5 --data-timeout 5 --downstream-timeout 5
--drain-timeout 2 --max-connections 10000 --max-connections-per-ip 0
--downstream-connections 2*N+16 --message-size-limit 128k, its stderr to
OUT/gateway.log; the downstream is the recording SmtpSink of
tests/integration/mxtest.py in a child process (its own GIL), or Postfix's
/usr/sbin/smtp-sink. Everything on 127.0.0.1; everything it starts it
stops (SIGTERM, then kill), also on Ctrl-C and on failure.

Each session comes from its own seed (derived from the run seed and its
index) and embeds a unique marker (zq + 14 base32 letters) in its addresses
and arguments. It is generated from a grammar of SMTP dialogues (lock-step
and pipelined transactions, chains of them in one write, NOOP/RSET/HELP/VRFY
floods, bodies with dot-stuffing, bare CR/LF, long lines and end-of-data
smuggling variants, over-long lines, quoted local parts with > " \\ spaces @,
SIZE/BODY/SMTPUTF8 parameters, non-ASCII, NULs and control bytes, HTTP
requests, unterminated tails) at a per-session level of hostility, then
perhaps mutated (bit flips, byte insertions, deletions, duplications,
splices, truncation), cut at random points and written with short bounded
delays; it ends with QUIT, a close, a reset, a half-close (SHUT_WR), a close
without ever reading, or by idling into the server's timeout.

Checks (a failure is written with the session seed and a transcript to
OUT/fail-NNNN-<checks>-<seed>.txt):
  grammar   every byte received forms RFC 5321 4.2 reply lines: a code
            [2-5][0-9][0-9], then '-', ' ' or the end; text of printable
            ASCII and tab; at most 512 octets with the CRLF; CRLF line ends;
            one code per multi-line reply; an RFC 3463 enhanced status code
            at the start of the text has the reply's class; the greeting is
            220 (or 421/554); the server never closes (FIN) mid-line.
  count     replies never outnumber greeting + lines the client completed
            (LFs sent; a message end is such a line) + 1 for an over-long
            open line + 1 closing 421 (timeout, error limit).
  marker    no reply holds any marker: client bytes echoed; another
            session's marker means one client's bytes reached another.
  close     nothing follows a 221 or 421; the server closes within the
            command timeout + 3 s after it; a FIN with no 221/421 before it
            while the client had not closed its side is an unannounced close.
  timeout   an idle session gets a reply or is closed within 20 s.
  mixed     (--downstream python) a message delivered downstream carries
            the markers of two sessions.
  liveness  the gateway stays alive; a fresh well-formed session (EHLO, one
            message to user@example.com, QUIT) succeeds every 5 s and at the
            end, and the downstream has it; SIGTERM at the end makes the
            gateway exit 0 within drain timeout + 5 s.
  sanitizer no "ERROR: AddressSanitizer", "runtime error:" (UBSan) or
            "LeakSanitizer" in the gateway's log (the report is printed).

Not judged (no false positives): a partial reply cut by a connection reset
(a reset discards queued data), what a session receives after it stopped
reading, sessions cut short by the end of the run. A replayed seed gives the
same session only with the same version of this file.
"""
import argparse
import collections
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import mxtest  # noqa: E402  (free ports, SmtpSink, Gateway)
from rspamdserver import FakeRspamd  # noqa: E402  (--content: a scanner that passes every message)

HOST = "127.0.0.1"
HOSTNAME = "mx.wirefuzz.test"        # fixed: the system host name could look like anything
LINE_MAX = 512                       # the gateway's smtp_line_limit (default)
B32 = "abcdefghijklmnopqrstuvwxyz234567"
MARKER_RE = re.compile(rb"zq[a-z2-7]{14}")
CODE_RE = re.compile(rb"[2-5][0-9][0-9]")
ESC_RE = re.compile(rb"([0-9])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
PROBE_PREFIX = "wirefuzz-probe"

# Timeouts given to the gateway (seconds).
CMD_TIMEOUT = 5
DATA_TIMEOUT = 5
DS_TIMEOUT = 5
DRAIN_TIMEOUT = 2

SESSION_CAP = 30.0        # a session never lasts longer than this
CLOSE_SLACK = 3.0         # after a 221/421 the server closes within CMD_TIMEOUT + this
IDLE_LIMIT = CMD_TIMEOUT + DATA_TIMEOUT + DS_TIMEOUT + 5.0   # an idle session must be closed by then


def session_seed(run_seed, index):
    """Session `index` of run `run_seed`: a 56-bit integer, all a session needs."""
    d = hashlib.sha256(b"wirefuzz:%d:%d" % (run_seed, index)).digest()
    return int.from_bytes(d[:7], "big")


def make_marker(rng):
    return "zq" + "".join(rng.choice(B32) for _ in range(14))


# ====================================================================== grammar


class Group:
    """Bytes meant to go out together (one pipelined write unless split)."""
    __slots__ = ("data", "ncmd", "label", "wait")

    def __init__(self, data, ncmd, label, wait="none"):
        self.data = data
        self.ncmd = ncmd      # command lines in it (body lines not counted)
        self.label = label
        self.wait = wait      # after it: none | reply (wait for a reply) | peek


class Write:
    __slots__ = ("data", "delay", "wait", "ncmd", "label")

    def __init__(self, data, delay, wait, ncmd, label):
        self.data, self.delay, self.wait, self.ncmd, self.label = data, delay, wait, ncmd, label


class Plan:
    def __init__(self, sseed, marker):
        self.sseed = sseed
        self.marker = marker
        self.wait_greeting = True
        self.groups = []
        self.writes = []
        self.ending = "quit"
        self.quiet = 1.5          # quit ending: give up after this much silence
        self.linger = 0.0         # close ending: read this long before closing
        self.desc = []
        self.mutations = []

    def describe(self):
        out = ["acts: " + ", ".join(self.desc),
               "ending: %s%s" % (self.ending, "" if self.wait_greeting else " (no wait for the greeting)")]
        if self.mutations:
            out.append("mutations: " + "; ".join(self.mutations))
        return "\n".join(out)


INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b".", b" ", b"<", b">", b'"', b"\\", b"@", b":",
               b"\t", b"\x7f", b"\xff", b"\xc3\xa9", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"%", b"=",
               b"QUIT\r\n", b"DATA\r\n", b"RSET\r\n", b"\x1b[0m", b"\xe2\x80\xa8", b"-", b"250 "]


class Gen:
    def __init__(self, rng, marker, size_limit):
        self.r = rng
        self.m = marker
        self.size_limit = size_limit
        self.k = 0
        # How hostile this session is: the odds that a choice point takes
        # a malformed variant. Clean sessions reach the downstream.
        self.p_bad = rng.choice([0.0, 0.0, 0.05, 0.15, 0.4, 0.8])

    def bad(self):
        return self.r.random() < self.p_bad

    def tag(self):
        self.k += 1
        return "%s.%d" % (self.m, self.k)

    def case(self, verb):
        r = self.r.random()
        if r < 0.8:
            return verb
        if r < 0.9:
            return verb.lower()
        return "".join(c.lower() if self.r.random() < 0.5 else c for c in verb)

    # ---- addresses

    def local(self):
        r = self.r
        m = self.tag() if r.random() < 0.5 else self.m
        if not self.bad():
            return m
        x = r.random()
        if x < 0.2:
            return m
        if x < 0.55:
            return m + "+" + str(r.randrange(1000))
        if x < 0.75:
            inner = r.choice(['>', '\\"', '\\\\', ' x', '@y', '<', ',', ':', ' ', '\\ ', '"', '\\>',
                              '>\\', '@example.com>', ' @ ', '\\\\\\"', ''])
            return '"%s%s"' % (m, inner) if r.random() < 0.8 else '"%s%s' % (inner, m)
        if x < 0.82:
            return m + r.choice(["\u00fc", "\u03b4\u03b5", "\u2603", "\u00e9t\u00e9"])
        if x < 0.88:
            return m + "x" * r.randrange(40, 300)
        return r.choice(["a." + m, m + "..x", "." + m, m + ".", m + "(c)", m + "[x]", m + ";x"])

    def domain(self):
        r = self.r
        if not self.bad():
            return "example.com"
        return r.choice(["EXAMPLE.COM", "Example.Com", "other.test", self.m + ".test", "[127.0.0.1]",
                         "[IPv6:::1]", "example.com.", "\u00ebxample.com", "x" * 70 + ".com",
                         "sub.example.com", "", "example..com", "-example.com", "localhost"])

    def addr(self, forward):
        r = self.r
        x = r.random()
        if not forward and x < 0.08:
            return "<>"
        if forward and x < 0.06:
            return r.choice(["<postmaster>", "<Postmaster>", "<postmaster@example.com>", '<"postmaster">'])
        a = "%s@%s" % (self.local(), self.domain())
        if not self.bad():
            return "<%s>" % a
        return r.choice(["<@relay.test:%s>" % a, "<@a.test,@b.test:%s>" % a, a, "<%s" % a, "<%s>>" % a,
                         "< %s >" % a, "<<%s>>" % a, "%s>" % a])

    def mail_params(self, body_len):
        r = self.r
        ps = []
        if not self.bad():
            if r.random() < 0.3:
                ps.append(r.choice(["SIZE=%d" % body_len, "BODY=8BITMIME", "BODY=7BIT", "SMTPUTF8"]))
            return (" " + " ".join(ps)) if ps else ""
        for _ in range(r.choice([1, 1, 2, 3])):
            ps.append(r.choice([
                "SIZE=%d" % r.choice([0, 1, 1000, body_len, body_len + 100, self.size_limit,
                                      self.size_limit + 1, 10 ** 20, 2 ** 64, 2 ** 32 - 1]),
                "SIZE=", "SIZE=-1", "SIZE=abc", "SIZE=1 SIZE=2", "BODY=8BITMIME", "BODY=7BIT",
                "BODY=BINARYMIME", "BODY=" + self.m, "SMTPUTF8", "SMTPUTF8=x", "RET=HDRS",
                "ENVID=" + self.m, "AUTH=<>", "X-" + self.m + "=1", "size=10", "body=8bitmime",
                "SMTPUTF8 SMTPUTF8", "=x", "SIZE==1", "BODY"]))
        return (" " + " ".join(ps)) if ps else ""

    def mail(self, body_len=0):
        r = self.r
        sep = "FROM:" if not self.bad() else r.choice(["FROM: ", "From:", "FROM :", "FROM", "FROM:  ", "FROM:\t"])
        return "%s %s%s%s" % (self.case("MAIL"), sep, self.addr(False), self.mail_params(body_len))

    def rcpt(self):
        r = self.r
        sep = "TO:" if not self.bad() else r.choice(["TO: ", "to:", "TO :", "TO", "TO:\t"])
        params = ""
        if self.bad() and r.random() < 0.3:
            params = " " + r.choice(["NOTIFY=NEVER", "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;%s@example.com" % self.m,
                                     "X=" + self.m, "SIZE=1", "BODY=7BIT"])
        return "%s %s%s%s" % (self.case("RCPT"), sep, self.addr(True), params)

    # ---- bodies (wire form, without the final ".\r\n")

    def body(self):
        r = self.r
        m = self.m
        lines = [b"From: <%s@src.test>" % m.encode(), b"To: <user@example.com>",
                 b"Subject: wirefuzz %s" % self.tag().encode(),
                 b"Message-ID: <%s@wirefuzz.test>" % self.tag().encode()]
        if self.bad():
            lines.append(b"X-8bit: caf\xc3\xa9 \xff\xfe")
        lines.append(b"")
        size = r.random()
        if size < 0.35:
            n = r.randrange(0, 4)
        elif size < 0.8:
            n = r.randrange(4, 60)
        elif size < 0.96:
            n = r.randrange(60, 600)
        else:
            n = -1  # a big one, around the size limit
        special = []
        if n < 0:
            chunk = (b"%s " % m.encode()) * 4 + b"0123456789" * 6
            total = r.randrange(self.size_limit // 2, self.size_limit + self.size_limit // 4)
            lines += [chunk] * (total // (len(chunk) + 2))
        else:
            for i in range(n):
                x = r.random() if self.bad() else r.uniform(0, 0.78)
                if x < 0.7:
                    lines.append(b"line %d of %s, some text to fill the line up" % (i, m.encode()))
                elif x < 0.78:
                    lines.append(r.choice([b"..", b"..x", b"...", b".. %s" % m.encode()]))   # stuffed
                elif x < 0.82:
                    lines.append(b"x" * r.choice([997, 998, 999, 1000, 1001, 2000, r.randrange(1000, 20000)]))
                    special.append("long line")
                elif x < 0.86:
                    lines.append(b"a\nb" if r.random() < 0.5 else b"a\rb")
                    special.append("bare CR/LF")
                elif x < 0.89:
                    lines.append(b"nul\x00here \x01\x02\x1b\x7f")
                elif x < 0.92:
                    lines.append("utf8 \u00fc\u2603 \U0001F600".encode())
                elif x < 0.97:
                    lines.append(self.smuggle())
                    special.append("smuggling")
                else:
                    lines.append(b"")
        wire = b"\r\n".join(lines) + b"\r\n"
        return wire, special

    def smuggle(self):
        """An end-of-data look-alike followed by a whole smuggled transaction."""
        r = self.r
        sep = r.choice([b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\n\x00.\r\n",
                        b"\r\n .\r\n", b"\r\n.\r\r\n", b"\n..\n", b"\r\n.\r\n"])
        s = self.tag().encode()
        tx = (b"MAIL FROM:<smuggled-%s@src.test>\r\nRCPT TO:<%s@example.com>\r\nDATA\r\n"
              b"Subject: smuggled %s\r\n\r\nsmuggled\r\n" % (s, s, s))
        return b"x" + sep + tx + b"."

    def final_dot(self, body):
        r = self.r.random()
        if r < 0.6 or not self.bad():
            return b".\r\n"
        if r < 0.92:
            return b"\r\n.\r\n"   # an empty line, then the end
        return self.r.choice([b".\n", b".\r", b"..\r\n", b". \r\n", b"\n.\r\n", b""])

    # ---- acts: each appends groups to the plan

    def hello(self, plan):
        r = self.r
        x = r.random()
        if x < 0.65 or not self.bad():
            line = "%s %s.client.test" % (self.case("EHLO"), self.m)
        elif x < 0.8:
            line = "%s %s.client.test" % (self.case("HELO"), self.m)
        else:
            line = r.choice(["EHLO", "EHLO [127.0.0.1]", "EHLO %s client" % self.m, "LHLO %s" % self.m,
                             "EHLO %s" % (self.m + "x" * r.randrange(400, 600)), "HELO %s\t" % self.m,
                             "EHLO \u00e9%s" % self.m, "EHLO %s.test " % self.m])
        plan.groups.append(Group(line.encode() + b"\r\n", 1, "hello", "reply"))
        plan.desc.append("hello")

    def transaction(self, plan, style):
        r = self.r
        body, special = self.body()
        nr = r.choice([1, 1, 1, 2, 3, 5]) if not self.bad() or r.random() < 0.9 else r.randrange(95, 110)
        cmds = [self.mail(len(body))] + [self.rcpt() for _ in range(nr)] + [self.case("DATA")]
        cmd_bytes = [c.encode() + b"\r\n" for c in cmds]
        if self.bad() and r.random() < 0.2:
            cmd_bytes.insert(r.randrange(1, len(cmd_bytes)), b"NOOP %s\r\n" % self.m.encode())
        end = self.final_dot(body)
        label = "tx(%s, %d rcpt, %d body bytes%s%s)" % (style, nr, len(body), ", " if special else "",
                                                          ", ".join(sorted(set(special))))
        if style == "pipelined":
            data = b"".join(cmd_bytes) + body + end
            plan.groups.append(Group(data, len(cmd_bytes), label, "peek"))
        elif style == "group":   # RFC 2920 style: MAIL..DATA, wait, body
            plan.groups.append(Group(b"".join(cmd_bytes), len(cmd_bytes), label, "reply"))
            plan.groups.append(Group(body + end, 0, "body", "reply"))
        else:                    # lock step
            for c in cmd_bytes:
                plan.groups.append(Group(c, 1, "cmd", "reply"))
            plan.groups.append(Group(body + end, 0, "body", "reply"))
        plan.desc.append(label)

    def chain(self, plan):
        """Several transactions (and maybe RSET/NOOP) in one pipelined write."""
        r = self.r
        n = r.randrange(2, 5)
        parts, ncmd = [], 0
        for _ in range(n):
            body, _ = self.body()
            nr = r.choice([1, 1, 2, 3])
            cmds = [self.mail(len(body))] + [self.rcpt() for _ in range(nr)] + ["DATA"]
            parts.append(b"".join(c.encode() + b"\r\n" for c in cmds) + body + self.final_dot(body))
            ncmd += len(cmds)
            if r.random() < 0.3:
                parts.append(r.choice([b"RSET\r\n", b"NOOP\r\n", b"HELP\r\n"]))
                ncmd += 1
        plan.groups.append(Group(b"".join(parts), ncmd, "chain(%d tx)" % n, "peek"))
        plan.desc.append("chain(%d tx)" % n)

    def tail_bytes(self):
        r = self.r
        x = r.random()
        if x < 0.3:
            return b"Q" * r.randrange(1, 700)
        if x < 0.6:
            return b"RCPT TO:<%s-secret-%s" % (self.m.encode(), b"s" * r.randrange(0, 300))
        if x < 0.7:
            return b"MAIL FROM:<%s" % self.m.encode()
        if x < 0.8:
            return r.choice([b"NOOP", b"NOOP\r", b"QUIT\r", b"QUI", b"\r", b"DATA\r", b"RSET \r"])
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 200))).replace(b"\n", b"")

    def flood(self, plan):
        r = self.r
        n = r.choice([r.randrange(5, 50), r.randrange(50, 300), r.randrange(300, 2000)])
        verbs = r.choice([["NOOP"], ["NOOP", "RSET"], ["HELP"], ["VRFY %s" % self.m], ["NOOP %s" % self.m],
                          ["NOOP", "RSET", "HELP", "VRFY %s" % self.m, "NOOP %s" % self.m, "EXPN %s" % self.m]])
        data = b"".join(r.choice(verbs).encode() + b"\r\n" for _ in range(n))
        label = "flood(%d x %s)" % (n, "/".join(v.split()[0] for v in verbs))
        if r.random() < 0.5:
            data += self.tail_bytes()
            label += "+tail"
        plan.groups.append(Group(data, n, label, "peek"))
        plan.desc.append(label)

    def oversize(self, plan):
        r = self.r
        k = r.choice([r.randrange(495, 520), r.randrange(520, 4000), r.randrange(4000, 70000)])
        head = r.choice([b"NOOP ", b"MAIL FROM:<%s@" % self.m.encode(), b"RCPT TO:<%s" % self.m.encode(),
                         b"EHLO ", b"X"])
        data = head + (self.m.encode() * (k // 16 + 1))[:max(0, k - len(head))]
        term = r.random() < 0.85
        if term:
            data += b"\r\n"
        plan.groups.append(Group(data, 1 if term else 0, "oversize(%d%s)" % (len(data), "" if term else ", open"),
                                 "reply"))
        plan.desc.append("oversize(%d)" % len(data))

    def http(self, plan):
        r = self.r
        m = self.m.encode()
        data = r.choice([
            b"GET / HTTP/1.1\r\nHost: %s.test\r\nUser-Agent: wirefuzz\r\n\r\n" % m,
            b"POST /%s HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello" % m,
            b"CONNECT %s.test:25 HTTP/1.1\r\n\r\n" % m,
            b"Subject: %s\r\n" % m,
            b"From: <%s@src.test>\r\n" % m,
            b"GET /%s\r\n" % m,
            b"HEAD / HTTP/1.1\r\n\r\n",
        ])
        plan.groups.append(Group(data, data.count(b"\n"), "http", "reply"))
        plan.desc.append("http")

    def junk(self, plan):
        r = self.r
        m = self.m.encode()
        x = r.random()
        if x < 0.5:
            data = r.choice([
                b"NOOP \x00%s\r\n" % m, b"MAIL FROM:<a\x01%s@example.com>\r\n" % m, b"RCPT TO:<%s\x00@example.com>\r\n" % m,
                b"XYZZY %s\r\n" % m, b"STARTTLS\r\n", b"AUTH PLAIN %s\r\n" % m, b"BDAT 10 LAST\r\n0123456789",
                b"EXPN %s\r\n" % m, b"VRFY %s\r\n" % m, b"HELP %s\r\n" % m, b"TURN\r\n", b"DATA %s\r\n" % m,
                b"RSET %s\r\n" % m, b"QUIT %s\r\n" % m, b"\r\n", b" \r\n", b"\t\r\n", b"NOOP\n", b"NOOP\r\r\n",
                b"\xff\xfe\xfd\r\n", "VRFY \u00fc%s\r\n".encode() % m, b"MAIL\r\n", b"RCPT\r\n", b"MAIL FROM\r\n",
                b"XCLIENT ADDR=1.2.3.4\r\n", b"ETRN %s\r\n" % m, b"\x00\x00\x00\x00\r\n", b"NO\x00OP\r\n",
                b"EHLO %s\x00\r\n" % m, b"\x1b[2J\r\n", b"NOOP \x7f\r\n"])
        else:
            n = r.randrange(1, 300)
            data = bytes(r.randrange(256) for _ in range(n)) + (b"\r\n" if r.random() < 0.7 else b"")
        plan.groups.append(Group(data, data.count(b"\n"), "junk", r.choice(["reply", "peek", "none"])))
        plan.desc.append("junk")

    def misc(self, plan):
        r = self.r
        line = r.choice(["RSET", "NOOP", "HELP", "VRFY %s" % self.m, "NOOP %s" % self.m, "RSET", "HELP DATA"])
        plan.groups.append(Group(self.case(line.split()[0]).encode() + line[4:].encode() + b"\r\n", 1, "misc",
                                 "reply"))
        plan.desc.append(line.split()[0].lower())

    # ---- mutation

    def mutate(self, plan):
        r = self.r
        gs = [g for g in plan.groups if g.data]
        if not gs:
            return
        for _ in range(r.randrange(1, 7)):
            g = r.choice(gs)
            d = bytearray(g.data)
            if not d:
                continue
            op = r.choice(["flip", "byte", "insert", "insert", "delete", "dup", "splice", "truncate"])
            p = r.randrange(len(d))
            if op == "flip":
                d[p] ^= 1 << r.randrange(8)
            elif op == "byte":
                d[p] = r.choice([0, 10, 13, 46, 32, 127, 255, 0x80, 62, 60, 34, 92, 64, r.randrange(256)])
            elif op == "insert":
                ins = r.choice(INTERESTING) if r.random() < 0.7 else bytes(r.randrange(256) for _ in range(r.randrange(1, 9)))
                d[p:p] = ins
            elif op == "delete":
                n = r.randrange(1, min(len(d), 16) + 1) if r.random() < 0.8 else r.randrange(1, len(d) + 1)
                del d[p:p + n]
            elif op == "dup":
                n = r.randrange(1, min(len(d) - p, 2048) + 1)
                d[p:p] = bytes(d[p:p + n]) * r.choice([1, 1, 2, 3, 10])
            elif op == "splice":
                src = r.choice(gs).data
                if src:
                    q = r.randrange(len(src))
                    d[p:p] = src[q:q + r.randrange(1, 200)]
            else:
                del d[p:]
            g.data = bytes(d)
            plan.mutations.append("%s@%d of %s" % (op, p, g.label))


def generate(sseed, size_limit=131072):
    """The whole session from its seed: groups, then writes, then the ending."""
    r = random.Random(sseed)
    plan = Plan(sseed, make_marker(r))
    g = Gen(r, plan.marker, size_limit)
    plan.wait_greeting = r.random() < 0.9
    if r.random() < 0.9:
        g.hello(plan)
    nacts = r.choice([1, 1, 2, 2, 3, 4, 6])
    acts = [(g.transaction, 28), (g.chain, 8), (g.flood, 16), (g.misc, 8)]
    if g.p_bad:
        acts += [(g.oversize, 7), (g.http, 3), (g.junk, 12), (g.hello, 3)]
    total = sum(w for _, w in acts)
    for _ in range(nacts):
        x = r.uniform(0, total)
        for fn, w in acts:
            x -= w
            if x <= 0:
                break
        if fn == g.transaction:
            fn(plan, r.choice(["pipelined", "pipelined", "group", "lockstep"]))
        else:
            fn(plan)
    # The bug pattern of a pipelining flood with an unterminated tail in one write.
    if r.random() < 0.12:
        g.flood(plan)
        if not plan.groups[-1].label.endswith("+tail"):
            plan.groups[-1].data += g.tail_bytes()
            plan.groups[-1].label += "+tail"
            plan.desc[-1] += "+tail"
    elif r.random() < 0.12:
        tail = g.tail_bytes()
        plan.groups.append(Group(tail, 0, "tail", "peek"))
        plan.desc.append("tail(%d)" % len(tail))
    if r.random() < (0.1 if not g.p_bad else 0.45):
        g.mutate(plan)

    # The ending.
    x = r.random()
    if x < 0.45:
        plan.ending = "quit"
        q = b"QUIT\r\n"
        if plan.groups and not plan.groups[-1].data.endswith(b"\n") and r.random() < 0.7:
            q = b"\r\n" + q   # finish the open tail so that QUIT is a line of its own
        plan.groups.append(Group(q, 1, "quit", "none"))
        plan.quiet = 1.5
    elif x < 0.65:
        plan.ending = "close"
        plan.linger = r.choice([0.0, 0.01, 0.05, 0.2, 0.5])
    elif x < 0.73:
        plan.ending = "rst"
        plan.linger = r.choice([0.0, 0.0, 0.05])
    elif x < 0.87:
        plan.ending = "shutwr"
    elif x < 0.96:
        plan.ending = "noread"
    else:
        plan.ending = "idle"

    # Writes: split, merge, delays.
    blast = r.random() < 0.12
    total_delay = 0.0
    pending = None
    for i, grp in enumerate(plan.groups):
        if pending is not None:
            grp_data = pending.data + grp.data
            ncmd = pending.ncmd + grp.ncmd
            label = pending.label + "+" + grp.label
            pending = None
        else:
            grp_data, ncmd, label = grp.data, grp.ncmd, grp.label
        last = i == len(plan.groups) - 1
        if not last and (blast or r.random() < 0.15):
            pending = Write(grp_data, 0.0, grp.wait, ncmd, label)
            continue
        x = r.random()
        if x < 0.65 or len(grp_data) < 2:
            cuts = []
        elif x < 0.9:
            cuts = sorted(r.sample(range(1, len(grp_data)), min(len(grp_data) - 1, r.randrange(1, 4))))
        elif x < 0.95 and len(grp_data) <= 64:
            cuts = list(range(1, len(grp_data)))        # byte by byte
        else:                                           # around CR and LF
            cuts = sorted(set(k + d for k, c in enumerate(grp_data[:20000]) if c in (10, 13)
                              for d in (0, 1) if 0 < k + d < len(grp_data)))[:40]
        pieces = [grp_data[a:b] for a, b in zip([0] + cuts, cuts + [len(grp_data)])]
        for j, p in enumerate(pieces):
            delay = 0.0
            if (j or i) and r.random() < 0.3 and total_delay < 0.6:
                delay = r.choice([0.0005, 0.002, 0.01, 0.02, r.uniform(0, 0.05)])
                total_delay += delay
            plan.writes.append(Write(p, delay, grp.wait if j == len(pieces) - 1 else "none",
                                     ncmd if j == len(pieces) - 1 else 0, label))
    return plan


# ====================================================================== reply checking


# The engine's own fixed answers to a well-formed line (CRLF, at most 512
# octets, no control byte): verb -> (codes allowed, whether args are allowed).
# 421 may always come (a closing reply). Lines failing these preconditions,
# or with other verbs, are not judged.
FIXED = {b"NOOP": ({250}, True), b"HELP": ({214}, True), b"RSET": ({250}, False), b"QUIT": ({221}, False),
         b"VRFY": ({252}, True), b"EXPN": ({502}, True)}


def fits(line, code):
    """Why reply `code` cannot answer `line` (None when it can)."""
    ok_line = (line.endswith(b"\r\n") and len(line) <= LINE_MAX
               and not any((c < 32 and c != 9) or c == 127 for c in line[:-2]))
    text = line[:-2].rstrip(b" \t") if ok_line else b""
    verb, _, args = text.partition(b" ")
    verb = verb.upper()
    if code == 354:
        if not (ok_line and verb == b"DATA" and not args):
            return "only DATA is answered with 354"
        return None
    if not ok_line or code == 421 or verb not in FIXED:
        return None
    codes, takes_args = FIXED[verb]
    if verb == b"VRFY" and not args:
        return None              # 501
    if args and not takes_args:
        return None              # 501
    if code not in codes:
        return "the server answers %s with %s" % (verb.decode(), "/".join(str(c) for c in sorted(codes)))
    return None


class ReplyChecker:
    """Parses the received bytes as SMTP replies and checks each line as it
    completes. `answer(n, code, lines)` maps reply n (1: the greeting) to what
    the client sent; it returns why it cannot, or None."""

    def __init__(self, answer):
        self.answer = answer
        self.buf = bytearray()
        self.raw = bytearray()
        self.cur = []            # lines of a multi-line reply in progress
        self.replies = []        # (time, code, [lines])
        self.errors = []         # (check, text)
        self.broken = False      # the stream stopped parsing (after the first grammar error)
        self.final_t = None      # when a 221 or 421 completed
        self.final_code = None
        self.after_final = False
        self.first_code = None

    def err(self, check, text):
        self.errors.append((check, text))

    def feed(self, data, t):
        self.raw += data
        if self.final_t is not None and not self.after_final:
            self.after_final = True
            self.err("close", "%d bytes after the %d reply: %r" % (len(data), self.final_code, bytes(data[:200])))
        if self.broken:
            return
        self.buf += data
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                if len(self.buf) > LINE_MAX - 1:
                    self.err("grammar", "reply line longer than 512 octets (%d bytes, no LF yet): %r"
                             % (len(self.buf), bytes(self.buf[:120])))
                    self.broken = True
                return
            line = bytes(self.buf[:i + 1])
            del self.buf[:i + 1]
            if not self.line(line, t):
                self.broken = True
                return

    def line(self, line, t):
        if len(line) > LINE_MAX:
            self.err("grammar", "reply line of %d octets (over 512): %r" % (len(line), line[:120]))
            return False
        if not line.endswith(b"\r\n"):
            self.err("grammar", "reply line ends in a bare LF: %r" % line)
            return False
        body = line[:-2]
        if not CODE_RE.match(body) or (len(body) > 3 and body[3:4] not in (b" ", b"-")):
            self.err("grammar", "not a reply line: %r" % line)
            return False
        text = body[4:]
        bad = [c for c in text if not (32 <= c <= 126 or c == 9)]
        if bad:
            self.err("grammar", "byte 0x%02x in reply text: %r" % (bad[0], line))
            return False
        code = int(body[:3])
        if self.cur and self.cur[0][:3] != body[:3]:
            self.err("grammar", "multi-line reply changes code: %r then %r" % (self.cur[0], line))
            return False
        m = ESC_RE.match(text)
        if m and m.group(1) != body[:1]:
            self.err("grammar", "enhanced status code class %s in a %d reply: %r" % (m.group(1).decode(), code, line))
            return False
        self.cur.append(line)
        if body[3:4] == b"-":
            if len(self.cur) > 1000:
                self.err("grammar", "multi-line reply of over 1000 lines")
                return False
            return True
        lines, self.cur = self.cur, []
        self.replies.append((t, code, lines))
        n = len(self.replies)
        if n == 1:
            self.first_code = code
            if code not in (220, 421, 554):
                self.err("grammar", "greeting is %r (not 220, 421 or 554)" % lines[0])
        why = self.answer(n, code, lines)
        if why:
            self.err("count", why)
            return False
        if code in (221, 421) or (n == 1 and code == 554):
            self.final_t = t
            self.final_code = code
            if self.buf:
                self.after_final = True
                self.err("close", "bytes after the %d reply: %r" % (code, bytes(self.buf[:200])))
                return False
        return True

    @property
    def partial(self):
        return bool(self.buf) or bool(self.cur)


# ====================================================================== a session on the wire


def clip(b, n=4000):
    b = bytes(b)
    if len(b) <= n:
        return repr(b)
    return "%r ... (%d more bytes) ... %r" % (b[:n - 400], len(b) - n, b[-400:])


class Registry:
    """marker -> session seed, for every session (and probe) of the run."""

    def __init__(self):
        self.d = {}

    def add(self, marker, sseed):
        self.d[marker] = sseed

    def who(self, marker):
        return self.d.get(marker)


class Session:
    def __init__(self, plan, port, registry, stop):
        self.plan = plan
        self.port = port
        self.reg = registry
        self.stop = stop
        self.events = []
        self.t0 = None
        self.lf_sent = 0
        self.run = 0             # bytes sent since the last LF
        self.bytes_sent = 0
        self.cmds_sent = 0
        self.closed = None       # None, 'fin' or 'rst' (by the server)
        self.closed_t = None
        self.we_closed = False   # we shut down our side or closed: server closing is expected
        self.aborted = None      # why we stopped early (stop flag, cap, stall)
        self.reset_seen = False  # send() saw the connection reset
        self.failures = []
        self.notes = []
        self.rx = ReplyChecker(self.answer)
        self.sock = None
        # The line model: which reply answers which line. In the command
        # phase the server answers every line (LF-terminated, CRLF or bare
        # LF) with exactly one reply, in order; a 354 starts a body that ends
        # at the first CRLF "." CRLF (the CRLF of the DATA line counting) and
        # gets one reply. Beyond that only three replies answer no line: the
        # greeting, a 500 for an over-long line the server answers before its
        # LF, and a closing 421 (timeout, error limit).
        self.sent = bytearray()
        self.pos = 0             # lines before this offset are in `items`
        self.items = collections.deque()   # (kind, start, end) awaiting a reply
        self.data_from = None    # body start while the server is in DATA
        self.open_answered = False
        self.answered = 0        # lines answered
        self.misfit = []         # replies that do not fit the line they answer
        self.misfit_sig = None

    def model(self):
        """Turn newly sent complete lines (or a complete body) into items."""
        sent = self.sent
        while True:
            if self.data_from is not None:
                j = sent.find(b"\r\n.\r\n", max(self.data_from - 2, self.pos))
                if j < 0:
                    self.pos = max(self.data_from - 2, len(sent) - 4)
                    return
                self.items.append(("end of data", self.data_from, j + 5))
                self.pos = j + 5
                self.data_from = None
                continue
            lf = sent.find(b"\n", self.pos)
            if lf < 0:
                return
            if self.open_answered:
                self.open_answered = False
            else:
                self.items.append(("line", self.pos, lf + 1))
            self.pos = lf + 1

    def answer(self, n, code, lines):
        if n == 1:
            return None          # the greeting
        if self.items:
            kind, start, end = self.items.popleft()
            self.answered += 1
            if kind == "line":
                line = bytes(self.sent[start:end])
                why = fits(line, code)
                if why:
                    self.misfit.append("reply %d %r answers the line %r (sent at offset %d): %s"
                                       % (n, lines[0], line[:200], start, why))
                    self.misfit_sig = self.misfit_sig or "order: %d answers %r" % (code, line[:4].upper())
            if code == 354 and kind == "line":
                # The body starts after this line: what followed it was
                # taken for command lines, before the server said 354.
                self.items.clear()
                self.open_answered = False
                self.data_from = self.pos = end
                self.model()
            return None
        if code == 421:
            return None          # closing: timeout or error limit
        if self.data_from is None and len(self.sent) - self.pos >= LINE_MAX - 12 and not self.open_answered:
            self.open_answered = True   # the over-long line, answered before its LF
            return None
        where = ("inside a message body (from offset %d, no CRLF.CRLF sent yet)" % self.data_from
                 if self.data_from is not None else "every line sent so far has had its reply")
        return ("reply %d %r answers nothing the client sent: %s (%d lines answered, open line of %d bytes)"
                % (n, lines[0], where, self.answered, len(self.sent) - self.pos))

    def ev(self, what):
        self.events.append("[%8.4f] %s" % (time.monotonic() - self.t0, what))

    def fail(self, check, text):
        self.failures.append((check, text))

    # ---- socket primitives

    def _recv(self):
        try:
            d = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except (ConnectionResetError, ConnectionAbortedError):
            self._server_closed("rst")
            return
        except OSError as e:
            self._server_closed("rst")
            self.ev("recv error %r" % e)
            return
        if not d:
            self._server_closed("fin")
            return
        t = time.monotonic()
        self.ev("recv %d: %s" % (len(d), clip(d, 1500)))
        self.rx.feed(d, t)
        self.last_rx = t

    def _server_closed(self, how):
        if self.reset_seen:
            how = "rst"     # a reset reported by send(): a later recv() of 0 is not a FIN
        if self.closed is None:
            self.closed = how
            self.closed_t = time.monotonic()
            self.closed_on_open = not self.we_closed
            self.ev("server closed (%s)" % ("FIN" if how == "fin" else "RST/error"))

    def wait(self, seconds, cond=None, read=True):
        """Read for up to `seconds`, or until cond() holds or the server closes."""
        end = time.monotonic() + seconds
        p = select.poll()
        p.register(self.sock, select.POLLIN if read else 0)
        while self.closed is None:
            if cond and cond():
                return True
            now = time.monotonic()
            if now >= end:
                return False
            if self.stop.is_set():
                self.aborted = self.aborted or "run ended"
                return False
            if now > self.hard_end:
                self.aborted = self.aborted or "session cap"
                return False
            ev = p.poll(max(1, min(50, int((end - now) * 1000) + 1)))
            if ev and read:
                self._recv()
        return bool(cond and cond())

    def send(self, data, read=True):
        """Write all of data (reading meanwhile); False if it could not."""
        off = 0
        last_progress = time.monotonic()
        p = select.poll()
        while off < len(data):
            if self.closed is not None or self.rx.final_t is not None:
                self.ev("stop writing: %s" % ("server closed" if self.closed else "got %d" % self.rx.final_code))
                return False
            if self.stop.is_set():
                self.aborted = self.aborted or "run ended"
                return False
            try:
                n = self.sock.send(data[off:off + 65536])
            except (BlockingIOError, InterruptedError):
                n = 0
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
                self.ev("send error %r" % e)
                self.reset_seen = True
                if read:
                    self.wait(0.5)     # what arrived before the close still counts
                else:
                    self._server_closed("rst")
                return False
            now = time.monotonic()
            if n:
                chunk = data[off:off + n]
                self.ev("sent %d: %s" % (n, clip(chunk, 600)))
                self.sent += chunk
                self.model()
                self.bytes_sent += n
                nl = chunk.count(b"\n")
                self.lf_sent += nl
                self.run = len(chunk) - 1 - chunk.rfind(b"\n") if nl else self.run + n
                off += n
                last_progress = self.last_tx_t = now
                continue
            if now - last_progress > (2.0 if not read else 12.0):
                self.aborted = "write stalled (server not reading) after %d of %d bytes" % (off, len(data))
                self.ev(self.aborted)
                return False
            if now > self.hard_end:
                self.aborted = "session cap"
                return False
            p.register(self.sock, select.POLLOUT | (select.POLLIN if read else 0))
            for _, e in p.poll(50):
                if e & select.POLLIN and read:
                    self._recv()
        return True

    # ---- the session

    def execute(self):
        plan = self.plan
        self.reg.add(plan.marker, plan.sseed)
        self.t0 = time.monotonic()
        self.hard_end = self.t0 + SESSION_CAP
        self.last_rx = self.last_tx_t = self.t0
        read = plan.ending != "noread"
        try:
            self.sock = socket.create_connection((HOST, self.port), timeout=5)
        except OSError as e:
            self.notes.append("connect failed: %r" % e)
            self.ev("connect failed: %r" % e)
            return
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.ev("connected (plan: %s)" % plan.desc)
            if plan.wait_greeting and read:
                if not self.wait(10, lambda: self.rx.replies) and not self.aborted and self.closed is None:
                    self.notes.append("no greeting within 10 s")
            for w in plan.writes:
                if w.delay:
                    if read:
                        self.wait(w.delay)
                    else:
                        time.sleep(w.delay)
                if not self.send(w.data, read):
                    break
                self.cmds_sent += w.ncmd
                if not read:
                    continue
                if w.wait == "reply":
                    n = len(self.rx.replies)
                    self.wait(1.0, lambda: len(self.rx.replies) > n)
                elif w.wait == "peek":
                    self.wait(0.005)
            self.finish(read)
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.evaluate()

    def finish(self, read):
        plan = self.plan
        e = plan.ending
        final = lambda: self.rx.final_t is not None  # noqa: E731
        if self.closed is None and self.aborted is None and read and final():
            e = "final"           # a 221/421 came: only its close is left to see
        if self.aborted or self.closed is not None:
            if read and self.closed is None and not self.stop.is_set() and final():
                self.wait_close_after_final()
            return
        if e == "final":
            self.wait_close_after_final()
        elif e == "quit":
            # Until the server closes; give up after `quiet` s of silence
            # unless a 221/421 came (then its close is awaited).
            while self.closed is None and self.aborted is None:
                if final():
                    self.wait_close_after_final()
                    break
                if time.monotonic() - max(self.last_rx, self.last_tx_t) > plan.quiet:
                    self.ev("quiet for %.1f s: closing" % plan.quiet)
                    break
                self.wait(0.1)
        elif e == "close":
            if plan.linger:
                self.wait(plan.linger)
            if final() and self.closed is None:
                self.wait_close_after_final()
        elif e == "rst":
            if plan.linger:
                self.wait(plan.linger)
            if final() and self.closed is None:
                self.wait_close_after_final()
            else:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.ev("reset")
        elif e == "shutwr":
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.we_closed = True
                self.ev("shutdown(SHUT_WR)")
            except OSError:
                pass
            while self.closed is None and self.aborted is None:
                if final():
                    self.wait_close_after_final()
                    break
                if time.monotonic() - self.last_rx > 10:
                    self.notes.append("half-closed session not closed by the server in 10 s")
                    break
                self.wait(0.1)
        elif e == "noread":
            self.ev("close without reading")
        elif e == "idle":
            self.ev("idle until the server's timeout")
            while self.closed is None and self.aborted is None:
                if final():
                    self.wait_close_after_final()
                    break
                if time.monotonic() - max(self.last_rx, self.last_tx()) > IDLE_LIMIT:
                    self.fail("timeout", "idle session: no reply and no close for %.0f s (command, data and "
                              "downstream timeouts are %d/%d/%d s)" % (IDLE_LIMIT, CMD_TIMEOUT, DATA_TIMEOUT,
                                                                        DS_TIMEOUT))
                    break
                self.wait(0.2)
        if e != "shutwr":
            self.we_closed = True

    def last_tx(self):
        return self.last_tx_t

    def wait_close_after_final(self):
        limit = CMD_TIMEOUT + CLOSE_SLACK
        self.wait(max(0.0, self.rx.final_t + limit - time.monotonic()))
        if self.closed is None and self.aborted is None and time.monotonic() - self.rx.final_t >= limit:
            self.fail("close", "no close within %.0f s after the %d reply" % (limit, self.rx.final_code))

    def evaluate(self):
        rx = self.rx
        for check, text in rx.errors:
            self.fail(check, text)
        if self.misfit:
            self.fail("order", "%d replies do not fit the command they answer (in order, one per line); the "
                      "first: %s" % (len(self.misfit), self.misfit[0]))
        # Markers: any session's marker in what the server sent.
        seen = set()
        for m in MARKER_RE.findall(bytes(rx.raw)):
            if m in seen:
                continue
            seen.add(m)
            ms = m.decode()
            who = self.reg.who(ms)
            if who is None:
                self.fail("marker", "reply bytes hold %s, a marker of no known session (client bytes, mutated)" % ms)
            elif who == self.plan.sseed:
                self.fail("marker", "reply bytes hold this session's own marker %s (its own bytes echoed)" % ms)
            else:
                self.fail("marker", "reply bytes hold %s, the marker of %s: another client's bytes"
                          % (ms, "session %d" % who if who >= 0 else "liveness probe %d" % (-who - 1)))
        if self.closed == "fin" and rx.partial and not rx.broken:
            self.fail("grammar", "server closed (FIN) mid-reply: %r%s" % (bytes(rx.buf[:200]),
                      " after %d continuation lines" % len(rx.cur) if rx.cur else ""))
        elif self.closed == "rst" and rx.partial and not rx.broken:
            self.notes.append("reset with a partial reply pending (a reset may cut queued data): %r"
                              % bytes(rx.buf[:100]))
        if (self.closed == "fin" and rx.final_t is None and self.closed_on_open and not rx.broken
                and rx.replies):
            self.fail("close", "server closed (FIN) without a 221/421 (the client had not closed its side); "
                      "last reply %r" % rx.replies[-1][2][0])
        if self.closed and rx.final_t is not None and self.closed_t - rx.final_t > CMD_TIMEOUT + CLOSE_SLACK:
            self.fail("close", "closed %.1f s after the %d reply" % (self.closed_t - rx.final_t, rx.final_code))

    def signatures(self):
        """Each failure in a normalized form, to count failures of one kind."""
        out = []
        for check, text in self.failures:
            if check == "order":
                t = self.misfit_sig
            elif check == "marker":
                t = ("marker: own bytes echoed" if "own marker" in text else
                     "marker: another session's bytes" if "another client" in text else "marker: unknown marker")
            else:
                t = "%s: %s" % (check, text)
                t = re.sub(r"zq[a-z2-7]{14}", "M", t)
                t = re.sub(r"(.)\1{4,}", r"\1*", t)
                t = re.sub(r"[0-9]{4,}", "N", t)
                t = re.sub(r"\b(reply|offset|after) [0-9]+", r"\1 N", t)
                t = re.sub(r"\d+(\.\d+)? s\b", "T s", t)
                t = t[:72]
            if t not in out:
                out.append(t)
        return out

    def transcript(self, run_info=""):
        out = ["wirefuzz session %d: %s" % (self.plan.sseed, ", ".join(sorted(set(c for c, _ in self.failures)))
                                            or "ok"),
               run_info,
               "marker: %s" % self.plan.marker,
               self.plan.describe(),
               "", "failures:"]
        out += ["  [%s] %s" % f for f in self.failures] or ["  none"]
        if self.notes:
            out += ["notes:"] + ["  " + n for n in self.notes]
        if self.aborted:
            out.append("stopped early: %s" % self.aborted)
        out += ["", "counts: %d bytes sent, %d lines completed (LF), %d replies; line model: %d lines/bodies "
                "answered, %d waiting, %s" % (self.bytes_sent, self.lf_sent, len(self.rx.replies), self.answered,
                                              len(self.items), "in a body" if self.data_from is not None
                                              else "open line %d bytes" % (len(self.sent) - self.pos)),
                "", "replies:"]
        prev, same = None, 0
        for t, code, lines in self.rx.replies + [(None, None, None)]:
            if lines is not None and lines == prev:
                same += 1
                continue
            if same:
                out.append("  ... the same reply %d more times" % same)
                same = 0
            if lines is not None:
                out.append("  [%8.4f] %s" % (t - self.t0, " | ".join(repr(l) for l in lines)))
            prev = lines
        if self.rx.buf:
            out.append("  (unparsed) %s" % clip(self.rx.buf, 2000))
        out += ["", "received (all %d bytes):" % len(self.rx.raw), "  " + clip(self.rx.raw, 200000),
                "", "timeline:"] + ["  " + e for e in self.events]
        out += ["", "writes of the plan (%d):" % len(self.plan.writes)]
        for i, w in enumerate(self.plan.writes):
            out.append("  #%d delay %.4f wait %s [%s] %s" % (i, w.delay, w.wait, w.label, clip(w.data, 3000)))
        return "\n".join(out) + "\n"


# ====================================================================== downstream


def _pdeathsig():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def _reap(proc, steps):
    """Wait for proc to exit, escalating each time a wait runs out: steps
    are (action, seconds), action (None: none) done before waiting that
    long; SIGKILL after the last."""
    for action, seconds in steps:
        if action:
            action()
        try:
            proc.wait(seconds)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(3)


class _RecordingSink(mxtest.SmtpSink):
    """SmtpSink that keeps no messages (a long run would fill memory): it
    remembers probe Message-IDs and reports messages with several markers."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.count = 0
        self.probes = set()
        self.mixed = []

    def _record(self, msg, accepted):
        text = (msg.mail_from + " " + " ".join(msg.rcpts)).encode("utf-8", "replace") + b" " + msg.wire
        ms = sorted(set(m.decode() for m in MARKER_RE.findall(text)))
        with self.cond:
            self.count += 1
            if msg.message_id and msg.message_id.startswith("<" + PROBE_PREFIX) and accepted:
                self.probes.add(msg.message_id)
            if len(ms) > 1 and len(self.mixed) < 1000:
                i = text.find(ms[1].encode())
                self.mixed.append({"markers": ms, "mail_from": msg.mail_from, "rcpts": msg.rcpts,
                                   "conn": msg.conn_id, "size": len(msg.wire),
                                   "excerpt": repr(msg.wire[:1500]) + " ... " + repr(text[max(0, i - 300):i + 300])})
            self.cond.notify_all()
            if len(self.commands) > 50000:
                del self.commands[:]
            if len(self.reads) > 5000:
                del self.reads[:]


def sink_child(port):
    """The downstream in its own process (its own GIL): JSON lines on stdin/stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the parent, which stops us
    sink = _RecordingSink(port=port, idle_timeout=600)
    sink.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op == "find":
            ok = sink.wait_for(lambda s: req["msgid"] in s.probes, req.get("timeout", 10))
            resp = {"found": ok}
        elif op == "poll":
            with sink.cond:
                resp = {"count": sink.count, "mixed": sink.mixed}
                sink.mixed = []
        else:
            break
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()
    sink.stop()


class PythonDownstream:
    kind = "python"

    def __init__(self, log):
        self.port = mxtest.free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sink-child", str(self.port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     preexec_fn=_pdeathsig, text=True, bufsize=1)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("the Python sink did not start: %r" % line)

    def call(self, req):
        with self.lock:
            if self.proc.poll() is not None:
                raise RuntimeError("the Python sink exited with %s" % self.proc.returncode)
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def received(self, msgid, timeout=10):
        return self.call({"op": "find", "msgid": msgid, "timeout": timeout})["found"]

    def poll(self):
        return self.call({"op": "poll"})

    def stop(self):
        if self.proc.poll() is None:
            try:
                with self.lock:
                    self.proc.stdin.write('{"op": "quit"}\n')
                    self.proc.stdin.flush()
            except (OSError, ValueError):
                pass
            _reap(self.proc, [(None, 5), (self.proc.terminate, 3)])


class PostfixDownstream:
    kind = "smtp-sink"
    BIN = "/usr/sbin/smtp-sink"

    def __init__(self, log):
        self.port = mxtest.free_port()
        argv = [self.BIN]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["-m", "2000", "-t", "600", "%s:%d" % (HOST, self.port), "1024"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("smtp-sink did not start")
                time.sleep(0.05)

    def received(self, msgid, timeout=10):
        return True   # smtp-sink keeps nothing: the relayed 250 is the proof

    def poll(self):
        return {"count": None, "mixed": []}

    def stop(self):
        if self.proc.poll() is None:
            _reap(self.proc, [(self.proc.terminate, 5)])


# ====================================================================== the probe


def probe(port, downstream, registry, n, timeout=20.0):
    """A fresh well-formed session. Returns (ok, transcript)."""
    marker = make_marker(random.Random())
    registry.add(marker, -n - 1)
    msgid = "<%s.%d.%s@wirefuzz.test>" % (PROBE_PREFIX, n, marker)
    log = []
    t0 = time.monotonic()
    rx = ReplyChecker(lambda n, code, lines: None)

    def note(s):
        log.append("[%8.4f] %s" % (time.monotonic() - t0, s))

    try:
        sock = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as e:
        return False, "probe %d: connect failed: %r" % (n, e)
    steps = [(None, 220), (b"EHLO %s.probe.test\r\n" % marker.encode(), 250),
             (b"MAIL FROM:<%s@src.test>\r\n" % marker.encode(), 250), (b"RCPT TO:<user@example.com>\r\n", 250),
             (b"DATA\r\n", 354),
             (mxtest.dot_stuff(mxtest.make_message(msgid=msgid, subject="probe " + marker)) + b".\r\n", 250),
             (b"QUIT\r\n", 221)]
    ok = True
    why = ""
    try:
        sock.settimeout(timeout)
        for data, want in steps:
            if data:
                sock.sendall(data)
                note("sent %r" % data[:200])
            have = len(rx.replies)
            end = time.monotonic() + timeout
            while len(rx.replies) == have and not rx.errors:
                sock.settimeout(max(0.01, end - time.monotonic()))
                d = sock.recv(65536)
                if not d:
                    raise mxtest.Closed("server closed")
                note("recv %r" % d)
                rx.feed(d, time.monotonic())
            if rx.errors:
                ok, why = False, "reply check: %s" % (rx.errors,)
                break
            code = rx.replies[have][1]
            if code != want:
                ok, why = False, "wanted %d, got %r" % (want, rx.replies[have][2])
                break
    except (OSError, mxtest.Closed) as e:
        ok, why = False, "%r after %.1f s" % (e, time.monotonic() - t0)
    finally:
        sock.close()
    if ok and not downstream.received(msgid, 10):
        ok, why = False, "the gateway answered 250 but the downstream has no %s" % msgid
    return ok, "probe %d (%s): %s\n%s\n" % (n, msgid, "ok" if ok else "FAILED: " + why, "\n".join(log))


# ====================================================================== the run


SAN_RE = re.compile(r"ERROR: AddressSanitizer|runtime error:|LeakSanitizer|ERROR: UndefinedBehaviorSanitizer")
SAN_RE_B = re.compile(SAN_RE.pattern.encode())


def sanitizer_reports(log_text):
    out = []
    # The gateway's own log lines (logfmt, "ts=...") interleave with a
    # report written by another thread: leave them out.
    lines = [l for l in log_text.splitlines() if not l.startswith("ts=")]
    i = 0
    while i < len(lines):
        if SAN_RE.search(lines[i]):
            j = i + 1
            while j < len(lines) and j < i + 120 and not lines[j].startswith("SUMMARY:"):
                j += 1
            out.append("\n".join(lines[max(0, i - 2):j + 1]))
            i = j + 1
        else:
            i += 1
    return out


class Fuzzer:
    def __init__(self, args):
        self.a = args
        self.out = args.out
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reg = Registry()
        self.index = 0
        self.sessions = 0
        self.cmds = 0
        self.bytes = 0
        self.replies = 0
        self.failures = 0
        self.files = 0
        self.first_fail = None
        self.fail_checks = {}
        self.notes = 0
        self.t0 = None
        self.gw = None
        self.ds = None
        self.probes = 0
        self.downstream_msgs = None
        self.log_path = os.path.join(self.out, "gateway.log")
        self.interrupted = False
        self.san_seen = 0
        self.san_from = None     # log offset a little before the first report
        self.log_off = 0         # how far scan_log has read
        self.t_end = None
        self.sigs = {}
        self.outcomes = {}

    # ---- failures

    def record(self, kind, text, sseed=None, checks=(), sigs=()):
        with self.lock:
            self.failures += 1
            fresh = False
            for sg in sigs or (kind,):
                self.sigs[sg] = self.sigs.get(sg, 0) + 1
                fresh = fresh or self.sigs[sg] <= 3
            el = time.monotonic() - self.t0 if self.t0 else 0.0
            if self.first_fail is None:
                self.first_fail = el
            for c in checks or (kind,):
                self.fail_checks[c] = self.fail_checks.get(c, 0) + 1
            n = self.failures
            path = None
            if self.files < self.a.max_files or (fresh and self.files < 2 * self.a.max_files):
                self.files += 1
                path = os.path.join(self.out, "fail-%04d-%s-%s.txt" % (n, kind, sseed if sseed is not None else "run"))
                with open(path, "w") as f:
                    f.write(text)
            if n <= 25:
                first = text.split("\n[", 1)[0] if sseed is None else ""
                print("wirefuzz: FAIL %d at %.1f s: %s%s -> %s" % (
                    n, el, kind, (" session %d" % sseed) if sseed is not None else "",
                    path or "(no file: --max-files reached)"), flush=True)
                if sseed is None and kind != "sanitizer":   # scan_log prints those whole
                    print("  " + first.strip().replace("\n", "\n  ")[:2000], flush=True)
            elif n == 26:
                print("wirefuzz: more failures: counting only (files up to --max-files)", flush=True)

    # ---- processes

    def run_info(self, sseed, extra=""):
        return ("session %d of run seed %s%s\nreplay it alone: python3 %s --mxgate %s --workers %d --downstream %s "
                "--replay %d --repeat 20\nthe whole run again: add --seed %s to the run's command line"
                % (sseed, self.a.seed, extra, os.path.relpath(os.path.abspath(__file__)), self.a.mxgate,
                   self.a.workers, self.a.downstream, sseed, self.a.seed))

    def start(self):
        os.makedirs(self.out, exist_ok=True)
        for f in os.listdir(self.out):
            if re.match(r"fail-\d+-.*\.txt$", f):
                os.unlink(os.path.join(self.out, f))
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)
        self.sinklog = open(os.path.join(self.out, "downstream.log"), "wb")
        if self.a.downstream == "smtp-sink":
            self.ds = PostfixDownstream(self.sinklog)
        else:
            self.ds = PythonDownstream(self.sinklog)
        port = mxtest.free_port()
        opts = {
            "listen": "%s:%d" % (HOST, port), "workers": self.a.workers, "hostname": HOSTNAME,
            "downstream": "%s:%d" % (HOST, self.ds.port), "relay_domains": "example.com",
            "command_timeout": CMD_TIMEOUT, "data_timeout": DATA_TIMEOUT, "downstream_timeout": DS_TIMEOUT,
            "drain_timeout": DRAIN_TIMEOUT, "max_connections": 10000, "max_connections_per_ip": 0,
            "downstream_connections": 2 * self.a.concurrency + 16, "message_size_limit": self.a.size_limit,
            "log_level": self.a.log_level, "http_listen": "",
            "user": "root",  # as root, keep it: the output directory may be unreachable for nobody
        }
        if self.a.content:
            # every message held, scanned by a fake rspamd that passes it with
            # headers to add and a sender's field to remove, then relayed
            self.scanner = FakeRspamd()
            self.scanner.verdict["milter"] = {
                "add_headers": {"X-Spamd-Result": {"value": "default: False [0.50 / 15.00]", "order": 0},
                                "X-Spam-Status": {"value": "No, score=0.50", "order": -1}},
                "remove_headers": {"X-Spam-Status": 0}}
            self.scanner.start()
            opts.update(content_scanner="rspamd", rspamd_url=self.scanner.url,
                        spool_dir=os.path.join(self.out, "spill"))  # held past the memory budget
        if self.a.delivery != "relay":
            spool = os.path.join(self.out, "spool")
            shutil.rmtree(spool, ignore_errors=True)
            opts.update(delivery=self.a.delivery, spool_dir=spool)
        env = {}
        if "ASAN_OPTIONS" not in os.environ:
            env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
        if "UBSAN_OPTIONS" not in os.environ:
            env["UBSAN_OPTIONS"] = "print_stacktrace=1"
        self.gw = mxtest.Gateway(opts, self.log_path, binary=self.a.mxgate, env=env)
        self.gw.start(ready_timeout=20)
        self.port = port
        if self.a.verbose:
            print("wirefuzz: %s" % " ".join(self.gw.argv()), flush=True)

    def stop_all(self):
        """SIGTERM, then kill, for the gateway and the downstream; idempotent."""
        rc = None
        if self.gw is not None and self.gw.proc is not None:
            if self.gw.proc.poll() is None:
                rc = self.gw.stop()
            else:
                rc = self.gw.proc.returncode
            self.gw.kill()
        if self.ds is not None:
            self.ds.stop()
        if getattr(self, "scanner", None) is not None:
            self.scanner.stop()
            self.scanner = None
        return rc

    # ---- sessions

    def next_seed(self):
        with self.lock:
            i = self.index
            self.index += 1
        return session_seed(self.a.seed, i), i

    def worker(self):
        while not self.stop.is_set():
            sseed, i = self.next_seed()
            plan = generate(sseed, self.a.size_limit)
            s = Session(plan, self.port, self.reg, self.stop)
            try:
                s.execute()
            except Exception as e:   # a bug of ours: say so loudly, do not count it against the server
                import traceback
                print("wirefuzz: internal error in session %d: %r\n%s" % (sseed, e, traceback.format_exc()),
                      flush=True)
                continue
            with self.lock:
                self.sessions += 1
                self.cmds += s.cmds_sent
                self.bytes += s.bytes_sent
                self.replies += len(s.rx.replies)
                self.notes += len(s.notes)
                o = self.outcomes
                o["ending " + s.plan.ending] = o.get("ending " + s.plan.ending, 0) + 1
                k = "last reply %s" % (s.rx.final_code or "other")
                o[k] = o.get(k, 0) + 1
                k = "closed by server: %s" % s.closed
                o[k] = o.get(k, 0) + 1
                for n in s.notes + ([s.aborted] if s.aborted else []):
                    k = "note: " + re.sub(r"[0-9]+", "N", n.split(":")[0])[:60]
                    o[k] = o.get(k, 0) + 1
            if s.failures:
                checks = sorted(set(c for c, _ in s.failures))
                text = s.transcript(self.run_info(sseed, " (index %d, %.1f s into the run)"
                                                  % (i, time.monotonic() - self.t0)))
                if self.files < 50:
                    text += self.log_lines(plan.marker)
                self.record("-".join(checks), text, sseed, checks, s.signatures())

    def log_lines(self, marker):
        """The gateway's log lines that name the session's marker (its HELO
        and addresses), from the end of the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - (4 << 20)))
                tail = f.read()
        except OSError:
            return ""
        lines = [l.decode("utf-8", "replace") for l in tail.split(b"\n") if marker.encode() in l]
        return "\ngateway log lines naming %s (%d):\n%s\n" % (marker, len(lines), "\n".join(lines[-30:]))

    def prober(self):
        while not self.stop.wait(self.a.probe_interval):
            self.do_probe()

    def do_probe(self):
        with self.lock:
            self.probes += 1
            n = self.probes
        ok, text = probe(self.port, self.ds, self.reg, n)
        if not ok:
            self.record("liveness-probe", text + "\ngateway log tail:\n" + self.gw.log_tail(40))

    def check_downstream(self):
        try:
            r = self.ds.poll()
        except Exception as e:
            self.record("liveness-downstream", "downstream helper failed: %r" % e)
            return
        if r.get("count") is not None:
            self.downstream_msgs = r["count"]
        for m in r.get("mixed", []):
            owners = {}
            for mk in m["markers"]:
                who = self.reg.who(mk)
                if who is not None:
                    owners.setdefault(who, []).append(mk)
            if len(owners) > 1:
                self.record("mixed", "a message delivered downstream carries the markers of sessions %s\n%s\n"
                            % (sorted(owners), json.dumps(m, indent=1)), None)

    def scan_log(self):
        """Sanitizer reports in the gateway's log. The log is read from where
        the last scan stopped (it grows to tens of MB in a long run); a report
        is cut out from a little before its first line."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_off)
                new = f.read()
        except OSError:
            return
        cut = new.rfind(b"\n") + 1
        if self.san_from is None:
            m = SAN_RE_B.search(new, 0, cut)
            if m:
                self.san_from = max(0, self.log_off + m.start() - 4096)
        self.log_off += cut
        if self.san_from is None:
            return
        with open(self.log_path, "rb") as f:
            f.seek(self.san_from)
            reports = sanitizer_reports(f.read().decode("utf-8", "replace"))
        for rep in reports[self.san_seen:]:
            self.record("sanitizer", rep + "\n")
            print(rep, flush=True)
        self.san_seen = len(reports)

    def progress(self, final=False):
        el = (self.t_end if final and self.t_end else time.monotonic()) - self.t0
        with self.lock:
            s = ("wirefuzz: %d sessions, %d commands, %.1f MB sent, %d replies checked, %d failures in %.0f s "
                 "(%.1f sessions/s, %.0f commands/s)" % (self.sessions, self.cmds, self.bytes / 1e6, self.replies,
                                                          self.failures, el, self.sessions / max(el, 1e-9),
                                                          self.cmds / max(el, 1e-9)))
        if not final:
            s = "wirefuzz: [%3.0f s] " % el + s[len("wirefuzz: "):]
        print(s, flush=True)

    def run(self):
        a = self.a
        print("wirefuzz: seed %d (session seeds follow from it; replay one with --replay SESSION_SEED); "
              "%s, %d workers, %d concurrent sessions, %d s, downstream %s, out %s"
              % (a.seed, a.mxgate, a.workers, a.concurrency, a.seconds, a.downstream, self.out), flush=True)
        self.start()
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.worker, daemon=True, name="s%d" % i) for i in range(a.concurrency)]
        pt = threading.Thread(target=self.prober, daemon=True, name="probe")
        for t in threads:
            t.start()
        pt.start()
        end = self.t0 + a.seconds
        next_progress = self.t0 + 10
        died = False
        try:
            while time.monotonic() < end:
                time.sleep(0.25)
                if self.gw.proc.poll() is not None:
                    died = True
                    self.record("liveness-exit", "the gateway exited during the run with %s (negative: signal)\n"
                                "log tail:\n%s\n" % (self.gw.proc.returncode, self.gw.log_tail(80)))
                    break
                now = time.monotonic()
                if now >= next_progress:
                    next_progress += 10
                    self.check_downstream()
                    self.scan_log()
                    self.progress()
                if a.stop_on_failure and self.failures:
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            print("wirefuzz: interrupted", flush=True)
        self.stop.set()
        for t in threads + [pt]:
            t.join(SESSION_CAP + 5 if not self.interrupted else 2)
        self.t_end = time.monotonic()
        try:
            if not died and not self.interrupted:
                if self.gw.proc.poll() is None:
                    self.do_probe()     # the final probe
                else:
                    self.record("liveness-exit", "the gateway exited with %s\n%s\n"
                                % (self.gw.proc.returncode, self.gw.log_tail(80)))
                    died = True
                self.check_downstream()
            if not died and not self.interrupted:
                t = time.monotonic()
                rc = self.gw.stop()
                took = time.monotonic() - t
                if rc != 0:
                    self.record("liveness-sigterm", "after SIGTERM the gateway %s (%.1f s)\nlog tail:\n%s\n"
                                % ("had to be killed: no exit within drain timeout + 5 s" if rc is None
                                   else "exited with %d" % rc, took, self.gw.log_tail(60)))
                elif a.verbose:
                    print("wirefuzz: SIGTERM: exit 0 in %.2f s" % took)
        finally:
            self.stop_all()
        self.scan_log()
        if self.failures:
            print("wirefuzz: failures by check: %s; first at %.1f s; transcripts in %s" % (
                ", ".join("%s %d" % kv for kv in sorted(self.fail_checks.items())), self.first_fail, self.out))
            top = sorted(self.sigs.items(), key=lambda kv: -kv[1])
            print("wirefuzz: %d kinds of failure; the most frequent:" % len(top))
            for sg, n in top[:15]:
                print("  %6d  %s" % (n, sg))
        if self.downstream_msgs is not None and a.verbose:
            print("wirefuzz: the downstream took %d messages; %d probes; %d notes" % (
                self.downstream_msgs, self.probes, self.notes))
        if a.verbose:
            for k in sorted(self.outcomes):
                print("  %-70s %d" % (k, self.outcomes[k]))
        self.progress(final=True)     # the summary: always the last line
        if self.interrupted:
            return 130
        return 1 if self.failures else 0


def replay(args, f):
    """One session, alone, --repeat times."""
    f.a.seed = "n/a"
    plan0 = generate(args.replay, args.size_limit)
    print("wirefuzz: replaying session %d (marker %s)\n%s" % (args.replay, plan0.marker, plan0.describe()))
    f.start()
    f.t0 = time.monotonic()
    bad = 0
    try:
        for k in range(args.repeat):
            s = Session(generate(args.replay, args.size_limit), f.port, f.reg, f.stop)
            s.execute()
            if s.failures or args.verbose:
                path = os.path.join(f.out, "replay-%d-%d.txt" % (args.replay, k))
                with open(path, "w") as fh:
                    fh.write(s.transcript("replay %d of %d" % (k + 1, args.repeat)))
                print("wirefuzz: replay %d: %s -> %s" % (k + 1, ", ".join(sorted(set(c for c, _ in s.failures)))
                                                          or "ok", path))
            if s.failures:
                bad += 1
            if f.gw.proc.poll() is not None:
                print("wirefuzz: the gateway exited with %s" % f.gw.proc.returncode)
                bad += 1
                break
    except KeyboardInterrupt:
        pass
    finally:
        rc = f.stop_all()
    reps = sanitizer_reports(f.gw.log())
    for r in reps:
        print(r)
    if rc not in (0, None) or reps:
        bad += 1
    print("wirefuzz: replay: %d of %d runs failed (gateway exit %s)%s" % (
        bad, args.repeat, rc, "" if bad else "; a failure that needs other sessions' timing may not replay alone: "
        "rerun the whole run with its --seed"))
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="A client-side wire fuzzer for mxgate (see the top of this file).")
    ap.add_argument("--mxgate", default=os.path.relpath(os.path.join(ROOT, "build", "asan", "mxgate")),
                    help="the gateway binary (default build/asan/mxgate)")
    ap.add_argument("--workers", type=int, default=2, choices=[1, 2, 3, 4], help="gateway workers (default 2)")
    ap.add_argument("--concurrency", type=int, default=48, help="concurrent client sessions (default 48)")
    ap.add_argument("--seconds", type=float, default=60, help="run time (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="run seed (default: random, printed)")
    ap.add_argument("--replay", type=int, default=None, metavar="SESSION_SEED", help="run one session alone")
    ap.add_argument("--repeat", type=int, default=1, help="with --replay: how many times (default 1)")
    ap.add_argument("--delivery", choices=["relay", "spool", "relay-then-spool"], default="relay",
                    help="the gateway's delivery mode (spool modes write under OUT/spool)")
    ap.add_argument("--content", action="store_true",
                    help="content_scanner = rspamd, against a fake rspamd that passes every message with headers")
    ap.add_argument("--downstream", choices=["python", "smtp-sink"], default="python",
                    help="the recording SmtpSink in a child process (default; checks delivery and mixing) "
                         "or Postfix's /usr/sbin/smtp-sink")
    ap.add_argument("--out", default=os.path.relpath(os.path.join(ROOT, "build", "wirefuzz")),
                    help="failures, gateway.log (default build/wirefuzz)")
    ap.add_argument("--size-limit", type=int, default=131072, help="the gateway's message_size_limit (default 128 KiB)")
    ap.add_argument("--probe-interval", type=float, default=5.0, help="seconds between liveness probes")
    ap.add_argument("--max-files", type=int, default=200, help="most failure transcripts written")
    ap.add_argument("--log-level", default="info", help="the gateway's log_level")
    ap.add_argument("--stop-on-failure", action="store_true", help="end the run at the first failure")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--sink-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sink_child is not None:
        sink_child(args.sink_child)
        return 0
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if not os.path.exists(args.mxgate):
        print("wirefuzz: %s does not exist (make build/asan/mxgate, or --mxgate PATH)" % args.mxgate)
        return 2
    if args.downstream == "smtp-sink" and not os.path.exists(PostfixDownstream.BIN):
        print("wirefuzz: %s is not installed" % PostfixDownstream.BIN)
        return 2
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError, ImportError):
        pass

    def on_term(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)   # also when started with SIGINT ignored (a background job)
    fz = Fuzzer(args)
    try:
        if args.replay is not None:
            return replay(args, fz)
        return fz.run()
    except KeyboardInterrupt:
        print("wirefuzz: interrupted")
        return 130
    except (mxtest.StartError, RuntimeError) as e:
        print("wirefuzz: could not start: %s" % e)
        return 2
    finally:
        # Whatever happened: nothing we started outlives us.
        fz.stop.set()
        try:
            fz.stop_all()
        except KeyboardInterrupt:
            fz.stop_all()


if __name__ == "__main__":
    sys.exit(main())
