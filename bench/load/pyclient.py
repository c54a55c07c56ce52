#!/usr/bin/env python3
"""
pyclient.py - a plain smtplib client: N messages of SIZE octets, one after
the other over one persistent session (or a session each), timing each from
MAIL to the reply to the end of data, the way mxgate-load measures a message
(smtplib's sendmail() is MAIL, RCPT..., DATA, body: lockstep, no pipelining).
A yardstick for mxgate-load's latency figures, not a load generator.

  python3 bench/load/pyclient.py --target 127.0.0.1:2525 --messages 300 --size 4096

--raw speaks SMTP over a plain socket instead (lockstep, or MAIL, RCPT and
DATA in one write with --pipelining, as mxgate-load does), so that Python's
own cost per command weighs less. Against a sink that answers after a delay
(mxgate-load sink --latency-ms 1), both clients should see the same
latency within the noise.

Prints one JSON object: messages_ok, messages_failed, elapsed_s, msgs_per_s,
latency {count, mean_us, p50_us, p90_us, p99_us, max_us} (exact, from the
sorted samples), cpu_user_s, cpu_sys_s.
"""
import argparse
import json
import math
import os
import smtplib
import socket
import sys
import time


def body_of(size, n):
    head = ("From: <pyclient@example.org>\r\nTo: <user0@example.com>\r\nSubject: pyclient %d\r\n"
            "Message-ID: <pyclient.%d.%d@mxgate-load>\r\n\r\n" % (n, os.getpid(), n))
    line = "abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
    need = max(size - len(head), 2)
    reps = need // len(line) + 1
    return (head + (line * reps)[:need - 2] + "\r\n").encode()


def pct(sorted_us, p):
    if not sorted_us:
        return 0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_us) - 1e-9))
    return sorted_us[min(rank, len(sorted_us)) - 1]


class Raw:
    """Just enough SMTP over a socket: lines out, replies in."""

    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.reply()
        self.cmd(b"EHLO pyclient.test\r\n")

    def reply(self):
        """The code of one (possibly multiline) reply."""
        while True:
            i = self.buf.find(b"\n")
            while i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                if len(line) < 4 or line[3:4] != b"-":
                    return int(line[:3])
                i = self.buf.find(b"\n")
            d = self.s.recv(65536)
            if not d:
                raise OSError("closed")
            self.buf += d

    def cmd(self, line):
        self.s.sendall(line)
        return self.reply()

    def send(self, sender, rcpts, msg, pipelining):
        stuffed = msg.replace(b"\r\n.", b"\r\n..")
        cmds = [b"MAIL FROM:<%s>\r\n" % sender.encode()] + [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts] + \
            [b"DATA\r\n"]
        if pipelining:
            self.s.sendall(b"".join(cmds))
            codes = [self.reply() for _ in cmds]
        else:
            codes = [self.cmd(c) for c in cmds]
        if codes[-1] != 354:
            self.cmd(b"RSET\r\n")
            return codes[-1]
        return self.cmd(stuffed + b".\r\n")

    def quit(self):
        try:
            self.cmd(b"QUIT\r\n")
        finally:
            self.s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rcpts", type=int, default=1)
    ap.add_argument("--session", choices=("persistent", "per-message"), default="persistent")
    ap.add_argument("--timeout", type=float, default=30.0, help="per socket operation")
    ap.add_argument("--raw", action="store_true", help="a plain socket instead of smtplib")
    ap.add_argument("--pipelining", action="store_true", help="with --raw: MAIL, RCPT and DATA in one write")
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    rcpts = ["user%d@example.com" % i for i in range(a.rcpts)]
    lat, ok, failed = [], 0, 0
    t0 = time.monotonic()
    c0 = os.times()
    s = None
    for n in range(a.messages):
        if s is None:
            if a.raw:
                s = Raw(host, int(port), a.timeout)
            else:
                s = smtplib.SMTP(host, int(port), local_hostname="pyclient.test", timeout=a.timeout)
                s.ehlo()
        msg = body_of(a.size, n)
        t = time.monotonic()
        if a.raw:
            try:
                code = s.send("pyclient@example.org", rcpts, msg, a.pipelining)
            except OSError as e:
                failed += 1
                print("pyclient: %s" % e, file=sys.stderr)
                s = None
                continue
            lat.append(int((time.monotonic() - t) * 1e6))
            ok, failed = (ok + 1, failed) if code == 250 else (ok, failed + 1)
            if a.session == "per-message":
                s.quit()
                s = None
            continue
        try:
            s.sendmail("pyclient@example.org", rcpts, msg)
            ok += 1
            lat.append(int((time.monotonic() - t) * 1e6))
        except smtplib.SMTPResponseException:
            failed += 1
            lat.append(int((time.monotonic() - t) * 1e6))
            s.rset()
        except (smtplib.SMTPException, OSError) as e:
            failed += 1
            print("pyclient: %s" % e, file=sys.stderr)
            s = None
            continue
        if a.session == "per-message":
            s.quit()
            s = None
    if s is not None:
        s.quit()
    el = time.monotonic() - t0
    c1 = os.times()
    lat.sort()
    out = {
        "client": "python raw socket" if a.raw else "python smtplib",
        "messages_ok": ok,
        "messages_failed": failed,
        "elapsed_s": round(el, 6),
        "msgs_per_s": round(ok / el, 1) if el > 0 else 0,
        "latency": {
            "count": len(lat),
            "mean_us": round(sum(lat) / len(lat), 1) if lat else 0,
            "p50_us": pct(lat, 50),
            "p90_us": pct(lat, 90),
            "p99_us": pct(lat, 99),
            "max_us": lat[-1] if lat else 0,
        },
        "cpu_user_s": round(c1.user - c0.user, 3),
        "cpu_sys_s": round(c1.system - c0.system, 3),
    }
    print(json.dumps(out))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
