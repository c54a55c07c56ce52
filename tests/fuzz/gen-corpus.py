#!/usr/bin/env python3
"""gen-corpus.py - writes the seed corpora of the fuzz targets:
tests/fuzz/corpus/fuzz_smtp/, tests/fuzz/corpus/fuzz_scan/,
tests/fuzz/corpus/fuzz_relay/ and tests/fuzz/corpus/fuzz_proxy/.

Each seed is the target's header bytes (configuration, split lengths; see
the comment at the top of fuzz_smtp.c and fuzz_scan.c) followed by a
realistic session or body; a fuzz_relay seed is its header followed by a
program of operations (fuzz_relay.c); a fuzz_proxy seed is its header
followed by a connection's first bytes: a PROXY header, v1 or v2, valid or
not, and the SMTP after it (fuzz_proxy.c). Run from the repository root;
rewrites the seeds it knows and leaves other files (ones libFuzzer merged
in) alone.
"""
import os
import random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# ---- fuzz_smtp header ----
NORMALIZE, UTF8, SMALL_LINE, SMALL_TEXT, SMALL_RCPT, SMALL_SIZE, SMALL_ERR = 1, 2, 4, 8, 16, 32, 64
DELAY, EARLY, CLOSE = 0x08, 0x10, 0x20
TLS_OFF, TLS_MAY, TLS_ENCRYPT = 0, 1, 2


def smtp_seed(session, flags=UTF8, limits=0, h2=0, outcap=6, driver=0, verdict=0, chunks=b"", tls=TLS_OFF):
    hdr = bytes([flags, limits, h2, (outcap & 7) | driver, verdict, len(chunks) | tls << 3]) + chunks
    return hdr + session


def chunk_len(n):
    """The chunk-length byte for exactly n octets (fuzzutil.h's fuzz_splits)."""
    if 1 <= n <= 16:
        return bytes([n - 1])
    assert (n - 1) % 8 == 0 and (n - 1) // 8 < 128, n
    return bytes([0x80 + (n - 1) // 8])


def tls_seed(plain, enc, **kw):
    """plain, then what comes through TLS: the driver does the handshake
    between pieces, so the first piece is plain (padded with a NOOP line,
    itself plaintext behind STARTTLS, to a length a chunk byte can say) and
    the rest comes whole."""
    n = len(plain) + 7
    while not (n <= 16 or (n - 1) % 8 == 0):
        n += 1
    plain += b"NOOP " + b"p" * (n - len(plain) - 7) + b"\r\n"
    return smtp_seed(plain + enc, chunks=chunk_len(len(plain)) + b"\xff", **kw)


def crlf(*lines):
    return b"".join(l + b"\r\n" for l in lines)


EHLO = b"EHLO client.example.org"
HELO = b"HELO client.example.org"
GROUP = crlf(b"MAIL FROM:<sender@example.org> SIZE=4096 BODY=8BITMIME",
             b"RCPT TO:<alice@example.com>", b"RCPT TO:<bob@example.com>",
             b"RCPT TO:<carol@example.com>", b"DATA")
BODY = crlf(b"From: Sender <sender@example.org>", b"To: Alice <alice@example.com>",
            b"Subject: hello", b"", b"Hello Alice,", b"..a line that began with a dot",
            b"Regards.", b".")


def smtp_seeds():
    s = {}
    s["basic"] = smtp_seed(crlf(EHLO) + GROUP + BODY + crlf(b"QUIT"))
    s["helo-plain"] = smtp_seed(crlf(HELO, b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.com>",
                                     b"DATA") + BODY + crlf(b"QUIT"))
    s["pipelined-split-mixed"] = smtp_seed(crlf(EHLO) + GROUP + BODY + crlf(b"QUIT"), chunks=b"\x03\x85\x0a")
    s["two-messages"] = smtp_seed(crlf(EHLO) + GROUP + BODY + GROUP + BODY + crlf(b"RSET", b"QUIT"),
                                  chunks=b"\x07")
    s["smuggle-lf-dot-lf"] = smtp_seed(crlf(EHLO) + GROUP + b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.net>\n"
                                       b"RCPT TO:<victim@example.com>\nDATA\nspoofed\n.\n" + b".\r\n" + crlf(b"QUIT"))
    s["smuggle-crlf-dot-lf-normalize"] = smtp_seed(
        crlf(EHLO) + GROUP + b"hi\r\n.\nMAIL FROM:<evil@example.net>\r\n\r\n.\r\n" + crlf(b"QUIT"),
        flags=UTF8 | NORMALIZE)
    s["smuggle-cr-dot-cr-normalize"] = smtp_seed(
        crlf(EHLO) + GROUP + b"hi\r.\rMAIL FROM:<evil@example.net>\r\n\n.\r\n\r\n.\r\n" + crlf(b"QUIT"),
        flags=UTF8 | NORMALIZE, chunks=b"\x02")
    s["smuggle-lf-dot-crlf"] = smtp_seed(crlf(EHLO) + GROUP + b"hi\n.\r\nRSET\r\n.\r\n" + crlf(b"QUIT"))
    s["dot-stuffing"] = smtp_seed(crlf(EHLO) + GROUP + crlf(b"..", b"...", b"..x", b". ", b"", b".")
                                  + crlf(b"NOOP"), chunks=b"\x00\x01")
    s["long-command"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<" + b"a" * 600 + b"@example.org>",
                                       b"NOOP", b"QUIT"), chunks=b"\x9f")
    s["long-command-small-max"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<abcdefghijklmnop@example.org>",
                                                 b"QUIT"), flags=UTF8 | SMALL_LINE, limits=4)
    s["long-body-line"] = smtp_seed(crlf(EHLO) + GROUP + b"x" * 1200 + b"\r\n.\r\n" + crlf(b"QUIT"))
    s["body-line-small-max"] = smtp_seed(crlf(EHLO) + GROUP + crlf(b"y" * 70, b"short", b".", b"QUIT"),
                                         flags=UTF8 | SMALL_TEXT, limits=64)
    s["body-lines-near-limit"] = smtp_seed(crlf(EHLO) + GROUP + crlf(*[b"w" * (93 + k) for k in range(8)], b"x" * 30,
                                                                b"y" * 150, b"..z" * 30, b"."),
                                           flags=UTF8 | SMALL_TEXT, limits=99, chunks=b"\x83\x8a")
    s["utf8-addresses"] = smtp_seed(crlf(EHLO, "MAIL FROM:<jürgen@bücher.example> SMTPUTF8".encode(),
                                         "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>".encode(), b"DATA")
                                    + BODY + crlf(b"QUIT"))
    s["utf8-without-smtputf8"] = smtp_seed(crlf(EHLO, "MAIL FROM:<jürgen@bücher.example>".encode(),
                                                b"MAIL FROM:<a@b.example> SMTPUTF8",
                                                "RCPT TO:<ü@example.com>".encode(), b"QUIT"), flags=0)
    s["source-route-literals"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<@relay1.example,@relay2.example:user@example.org>",
                                                b"RCPT TO:<postmaster>", b"RCPT TO:<\"quoted local\"@example.com>",
                                                b"RCPT TO:<user@[192.0.2.1]>", b"RCPT TO:<user@[IPv6:2001:db8::1]>",
                                                b"RCPT TO:<Postmaster@example.com>", b"DATA") + BODY)
    s["null-sender-params"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<> BODY=7BIT", b"RCPT TO:<a@example.com> NOTIFY=NEVER",
                                             b"RCPT TO: <b@example.com>", b"MAIL FROM:<x@y.example> FOO=BAR",
                                             b"DATA") + BODY)
    s["http-junk"] = smtp_seed(b"GET / HTTP/1.1\r\nHost: mx.example.net\r\nUser-Agent: curl/8.0\r\n\r\n")
    s["header-as-command"] = smtp_seed(crlf(EHLO, b"Subject: where did my DATA go", b"QUIT"))
    s["error-flood"] = smtp_seed(crlf(*([b"XYZZY"] * 8 + [b"EHLO", b"MAIL", b"RCPT TO:<a@b>", b"QUIT"])),
                                 flags=UTF8 | SMALL_ERR, h2=3 << 2)
    s["too-many-rcpt"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<a@example.org>",
                                        *[b"RCPT TO:<r%d@example.com>" % i for i in range(6)], b"DATA")
                                   + BODY, flags=UTF8 | SMALL_RCPT, h2=1)
    s["size-limits"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<a@example.org> SIZE=999999", b"MAIL FROM:<a@example.org> SIZE=10",
                                      b"RCPT TO:<b@example.com>", b"DATA") + b"z" * 300 + b"\r\n.\r\n" + crlf(b"QUIT"),
                                 flags=UTF8 | SMALL_SIZE, h2=2 << 5)
    s["misc-verbs"] = smtp_seed(crlf(b"NOOP", b"MAIL FROM:<a@example.org>", EHLO, b"RCPT TO:<a@b.example>", b"DATA",
                                     b"VRFY postmaster", b"EXPN staff", b"HELP", b"HELP MAIL", b"NOOP hello",
                                     b"RSET extra", b"STARTTLS", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"BDAT 10 LAST",
                                     b"TURN", b"ETRN example.org", b"noop", b"QUIT now", b"QUIT"))
    s["bare-lf-commands-normalize"] = smtp_seed(b"EHLO client.example.org\nMAIL FROM:<a@example.org>\n"
                                                b"RCPT TO:<b@example.com>\nDATA\nline one\nline two\n.\n\r\n.\r\nQUIT\n",
                                                flags=UTF8 | NORMALIZE)
    s["control-bytes"] = smtp_seed(b"EHLO client\x00.example.org\r\nHELO a\rb\r\nNOOP\x7f\r\nEHLO \tx\r\nEHLO ok.example\r\nQUIT\r\n")
    s["early-talk"] = smtp_seed(crlf(EHLO, b"QUIT"), driver=EARLY)
    s["verdicts-mixed-delayed"] = smtp_seed(crlf(EHLO) + GROUP + BODY + crlf(EHLO) + GROUP + BODY + crlf(b"QUIT"),
                                            outcap=0, driver=DELAY | CLOSE, verdict=0x35, chunks=b"\x05\x91")
    s["bad-paths-no-size-limit"] = smtp_seed(crlf(EHLO, b"MAIL FROM:<no-at-sign>", b"MAIL FROM:<a@-bad-.example>",
                                                  b"MAIL FROM:a@example.org", b"MAIL FROM:<a@example.org>x",
                                                  b"MAIL TO:<a@example.org>", b"VRFY", b"RCPT TO:<>", b"QUIT"),
                                             flags=UTF8 | SMALL_SIZE, h2=7 << 5)
    s["tls-hello-junk"] = smtp_seed(bytes.fromhex("16030100a5010000a103035f1a") + bytes(range(0, 64)) + b"\r\nQUIT\r\n")
    # STARTTLS (RFC 3207): plaintext injected behind it (CVE-2011-0411),
    # then, after the handshake, a session through TLS
    s["starttls-may"] = tls_seed(crlf(EHLO, b"STARTTLS", b"NOOP", b"MAIL FROM:<evil@example.net>"),
                                 crlf(EHLO) + GROUP + BODY + crlf(b"STARTTLS", b"QUIT"), tls=TLS_MAY)
    s["starttls-encrypt"] = tls_seed(crlf(EHLO, b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.com>",
                                          b"STARTTLS now", b"STARTTLS"),
                                     crlf(b"MAIL FROM:<a@example.org>", EHLO) + GROUP + BODY + crlf(b"QUIT"),
                                     tls=TLS_ENCRYPT)
    s["starttls-pipelined-refused"] = tls_seed(crlf(EHLO) + GROUP + BODY + crlf(b"MAIL FROM:<a@example.org>",
                                                                         b"STARTTLS", b"RSET", b"STARTTLS", b"NOOP"),
                                               crlf(HELO, b"STARTTLS", b"QUIT"), tls=TLS_MAY, verdict=0x45,
                                               driver=DELAY)
    s["starttls-off"] = smtp_seed(crlf(EHLO, b"STARTTLS", b"NOOP", b"QUIT"))
    return s


# ---- fuzz_scan header ----
SCAN_NORMALIZE = 1
LINE_NONE, LINE_SMALL, LINE_MID, LINE_1000 = 0 << 1, 1 << 1, 2 << 1, 3 << 1
SIZE_NONE, SIZE_BYTE, SIZE_32, SIZE_1M = 0 << 3, 1 << 3, 2 << 3, 3 << 3


def scan_seed(body, flags=LINE_1000 | SIZE_1M, h1=0, h2=0, chunks=b""):
    return bytes([flags, h1, h2, len(chunks)]) + chunks + body


def realistic_body(n_text, n_b64, seed):
    r = random.Random(seed)
    words = [b"the", b"message", b"server", b"report", b"please", b"review", b"attached", b"thanks",
             b"quarter", b"budget", b"a", b"of", b"to", "café".encode(), b"e-mail", b"100%"]
    out = [b"From: Sender <sender@example.org>", b"Subject: results", b"MIME-Version: 1.0", b""]
    for _ in range(n_text):
        line = b""
        while len(line) < 60:
            line += (b" " if line else b"") + r.choice(words)
        out.append(line[:78])
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for _ in range(n_b64):
        out.append(bytes(r.choice(alphabet) for _ in range(76)))
    out.append(b"..stuffed line")
    return crlf(*out) + b".\r\n"


def scan_seeds():
    s = {}
    s["simple"] = scan_seed(crlf(b"Subject: hi", b"", b"Hello.", b"."))
    s["empty"] = scan_seed(b".\r\n")
    s["realistic-2k"] = scan_seed(realistic_body(15, 12, 1))
    s["realistic-2k-split"] = scan_seed(realistic_body(15, 12, 2), chunks=b"\x8c\x03\xc1")
    s["realistic-normalize"] = scan_seed(realistic_body(10, 6, 3), flags=SCAN_NORMALIZE | LINE_1000 | SIZE_1M)
    s["dot-stuffing"] = scan_seed(crlf(b"..", b"...", b"..x", b". ", b"", b"."), chunks=b"\x00")
    s["smuggle-lf-dot-lf"] = scan_seed(b"hi\n.\nMAIL FROM:<evil@example.net>\r\n.\r\n")
    s["smuggle-crlf-dot-lf"] = scan_seed(b"hi\r\n.\nRSET\r\n.\r\n")
    s["smuggle-lf-dot-crlf"] = scan_seed(b"hi\n.\r\nRSET\r\n.\r\n")
    s["smuggle-cr-dot-cr"] = scan_seed(b"hi\r.\rRSET\r\n.\r\n")
    s["smuggle-dot-cr-cr-lf"] = scan_seed(b"a\r\n.\r\r\n.\r\n")
    s["smuggle-normalize"] = scan_seed(b"hi\n.\nx\r.\r\n\r.\r.\n..\r\n\n\n.\r\n",
                                       flags=SCAN_NORMALIZE | LINE_1000 | SIZE_1M, chunks=b"\x01")
    s["bare-cr-mid"] = scan_seed(b"abc\rdef\r\n" + b"g" * 100 + b"\r\n.\r\n")
    s["long-line"] = scan_seed(b"x" * 1100 + b"\r\n.\r\n")
    s["line-exactly-1000"] = scan_seed(b"y" * 998 + b"\r\n" + b".z" * 499 + b"\r\n.\r\n")
    s["line-small-max"] = scan_seed(crlf(b"a" * 10, b"b" * 30, b".c" * 8, b"."), flags=LINE_SMALL | SIZE_1M, h1=19)
    s["line-mid-max"] = scan_seed(crlf(b"a" * 63, b"b" * 64, b"c" * 65, b"d" * 200, b"."), flags=LINE_MID | SIZE_1M, h1=1)
    s["size-limit"] = scan_seed(realistic_body(5, 2, 4), flags=LINE_1000 | SIZE_BYTE, h2=200)
    s["size-limit-32"] = scan_seed(realistic_body(20, 10, 5), flags=LINE_NONE | SIZE_32, h2=40, chunks=b"\x90")
    s["no-end"] = scan_seed(crlf(b"truncated message", b"no end marker") + b"\r\n.")
    s["after-end"] = scan_seed(b"body\r\n.\r\nQUIT\r\n")
    s["block-boundaries"] = scan_seed((b"a" * 62 + b"\r\n") * 8 + (b"b" * 63 + b"\r\n.") * 2 + b"\r\n.\r\n",
                                      chunks=b"\xc0")
    s["cr-at-block-end"] = scan_seed(b"q" * 63 + b"\r" + b"\n" + b"r" * 62 + b"\r\r\n" + b"s" * 70 + b"\n\r\n.\r\n",
                                     flags=SCAN_NORMALIZE | LINE_MID | SIZE_NONE, h1=10)
    return s


# ---- fuzz_relay: a header, then operations (see the top of fuzz_relay.c) ----
# Indices into dict[] in fuzz_relay.c.
(D_GREET, D_GREET_ML, D_554_NOSERVICE, D_421_SHUTDOWN, D_EHLO_FULL, D_EHLO_PIPE, D_EHLO_8BIT, D_250_DS,
 D_EHLO_SIZE_UTF8_PIPE, D_EHLO_SIZE0, D_502, D_500, D_MAIL_OK, D_RCPT_OK, D_OK, D_250, D_QUEUED, D_354,
 D_354_GO, D_334, D_450, D_451, D_452, D_421_TIMEOUT, D_550, D_554_REJECTED, D_503, D_552, D_550_ML, D_250_ML,
 D_251, D_451_LOOKALIKE, D_GARBAGE, D_25, D_0_OK, D_LF, D_CRLF, D_CR, D_250_BARE_LF, D_250_DASH, D_600,
 D_MISMATCH, D_ODD_ESC, D_WRONG_CLASS, D_LMTP_GREET, D_LHLO, D_LMTP_OK, D_LMTP_452, D_LMTP_550, D_NUL,
 D_LONG_OK, D_LONG_BAD, D_EHLO_MANY) = range(53)
# Preludes (h[0] bits 1-2), failures (enum relay_fail), mailboxes (mailbox()).
P_NONE, P_PIPELINING, P_NO_PIPELINING, P_HELO = range(4)
F_CLOSED, F_RESET, F_SEND, F_TIMEOUT, F_CONNECT = 1, 2, 3, 4, 5
M_NULL, M_SENDER, M_USER, M_QUOTED, M_ROUTE, M_UTF8, M_256, M_257, M_255, M_1000, M_POSTMASTER, M_RAW, M_EMPTY = \
    range(13)
# MAIL parameters: bit 0 SMTPUTF8, 1 SIZE, 2-3 BODY= (2: 8BITMIME), 4-6 SIZE value (2: 999, 4: 1001).
PAR_UTF8, PAR_SIZE, PAR_8BIT = 1, 2, 2 << 2
SZ_999, SZ_1001 = 2 << 4, 4 << 4


def relay_seed(ops, lmtp=False, prelude=P_PIPELINING, lease=True, lazy=False, helo=0, send_all=False,
               max_due=0, final=F_TIMEOUT, tok=0, budget=1, piece=0):
    h0 = int(lmtp) | prelude << 1 | int(lease) << 3 | int(lazy) << 4 | helo << 5 | int(send_all) << 7
    h1 = max_due | (final - 1) << 3
    h2 = tok | (budget - 1) << 2 | piece << 4
    return bytes([h0, h1, h2]) + b"".join(ops)


def R_FEED(*d):
    return b"".join(bytes([0, i]) for i in d)


def R_RAW(b):
    return bytes([2, len(b)]) + b


def R_AUTO(n=1, v=0):
    return bytes([3, n - 1, v])  # n replies; v: 2 bits each, 0 ok 1 4xx 2 5xx 3 other ok


R_CONNECT, R_LEASE, R_DATA, R_EOD, R_RELEASE, R_PUMP = b"\x04", b"\x05", b"\x08", b"\x09", b"\x0d", b"\x0f"


def R_MAIL(m=M_SENDER, p=0):
    return bytes([6, m, p])


def R_RCPT(m=M_USER):
    return bytes([7, m])


def R_GROUP(n, null_sender=False):  # MAIL, n (0-7) RCPTs to a@y.test, DATA
    return bytes([10, n | 8 | (0x80 if null_sender else 0)])


def R_SENT(n=None):
    return bytes([11, 0x80 if n is None else n])


def R_FAIL(f):
    return bytes([12, f - 1])


def R_PIECE(n):
    return bytes([14, n])


def relay_seeds():
    s = {}
    s["pipelined-tx"] = relay_seed([R_MAIL(M_SENDER, PAR_SIZE | PAR_8BIT | SZ_999), R_RCPT(M_USER), R_RCPT(M_QUOTED),
                                    R_RCPT(M_POSTMASTER), R_DATA, R_FEED(D_MAIL_OK, D_RCPT_OK, D_550, D_RCPT_OK, D_354),
                                    R_EOD, R_FEED(D_QUEUED), R_RELEASE, R_SENT()])
    s["no-pipelining-tx"] = relay_seed([R_GROUP(3)] + [R_AUTO()] * 5 + [R_EOD, R_AUTO(), R_RELEASE], prelude=P_NO_PIPELINING,
                                       send_all=True)
    s["helo-fallback"] = relay_seed([R_MAIL(M_UTF8, PAR_UTF8), R_MAIL(M_SENDER, PAR_8BIT | PAR_SIZE | SZ_1001),
                                     R_RCPT(M_ROUTE), R_DATA, R_AUTO(), R_AUTO(), R_AUTO(), R_EOD, R_AUTO()],
                                    prelude=P_HELO)
    s["handshake-by-hand"] = relay_seed([R_CONNECT, R_PIECE(3), R_FEED(D_GREET_ML), R_PIECE(0), R_FEED(D_EHLO_MANY),
                                         R_LEASE, R_GROUP(2), R_AUTO(8), R_EOD, R_AUTO(), R_RELEASE],
                                        prelude=P_NONE, lease=False)
    s["lmtp-tx"] = relay_seed([R_MAIL(), R_RCPT(M_USER), R_RCPT(M_SENDER), R_RCPT(M_POSTMASTER), R_DATA,
                               R_FEED(D_MAIL_OK, D_LMTP_OK, D_LMTP_OK, D_LMTP_550, D_354), R_EOD,
                               R_FEED(D_LMTP_OK, D_LMTP_452), R_GROUP(1), R_AUTO(3), R_EOD, R_AUTO(), R_RELEASE], lmtp=True)
    s["lmtp-no-pipelining"] = relay_seed([R_GROUP(2)] + [R_AUTO()] * 4 + [R_EOD, R_AUTO(2, 0b0100), R_RELEASE], lmtp=True,
                                         prelude=P_NO_PIPELINING)
    s["lmtp-worst-of-all"] = relay_seed([R_MAIL(), R_RCPT(), R_RCPT(), R_RCPT(), R_DATA, R_AUTO(5), R_EOD,
                                         R_FEED(D_LMTP_550, D_LMTP_452, D_550)], lmtp=True)
    s["lmtp-fail-between-replies"] = relay_seed([R_GROUP(3), R_AUTO(5), R_EOD, R_FEED(D_LMTP_OK), R_FAIL(F_CLOSED)],
                                                lmtp=True)
    s["release-drain-rset-idle"] = relay_seed([R_MAIL(), R_RCPT(), R_RCPT(), R_FEED(D_MAIL_OK), R_RELEASE, R_FEED(D_RCPT_OK),
                                               R_FEED(D_550), R_FEED(D_OK), R_LEASE, R_GROUP(1), R_AUTO(3), R_EOD, R_AUTO(),
                                               R_RELEASE])
    s["release-drops-held"] = relay_seed([R_MAIL(), R_RCPT(), R_RCPT(), R_DATA, R_RELEASE, R_AUTO(), R_AUTO(), R_LEASE, R_GROUP(1),
                                          R_AUTO()], prelude=P_NO_PIPELINING)
    s["release-data-due-discard"] = relay_seed([R_GROUP(2), R_RELEASE, R_FEED(D_MAIL_OK, D_RCPT_OK, D_RCPT_OK, D_354)])
    s["release-in-body"] = relay_seed([R_GROUP(1), R_AUTO(3), R_RELEASE, R_FEED(D_QUEUED)])
    s["rset-refused"] = relay_seed([R_MAIL(), R_FEED(D_MAIL_OK), R_RELEASE, R_FEED(D_500)])
    s["fail-connect"] = relay_seed([R_FAIL(F_CONNECT)], prelude=P_NONE, lease=False)
    s["fail-mid-group"] = relay_seed([R_GROUP(4), R_FEED(D_MAIL_OK), R_FAIL(F_RESET)])
    s["fail-in-body"] = relay_seed([R_GROUP(1), R_AUTO(3), R_FAIL(F_TIMEOUT)])
    s["fail-after-eod"] = relay_seed([R_GROUP(1), R_AUTO(), R_AUTO(), R_AUTO(), R_EOD, R_FAIL(F_CLOSED)],
                                     prelude=P_NO_PIPELINING)
    s["fail-with-held"] = relay_seed([R_GROUP(3), R_AUTO(), R_FAIL(F_SEND)], prelude=P_NO_PIPELINING)
    s["server-4xx-5xx"] = relay_seed([R_GROUP(3), R_FEED(D_MAIL_OK, D_421_TIMEOUT, D_450, D_550_ML, D_451), R_DATA,
                                      R_FEED(D_554_REJECTED), R_RELEASE, R_FEED(D_OK), R_LEASE, R_GROUP(1),
                                      R_FEED(D_503, D_250_ML, D_554_REJECTED), R_GROUP(2),
                                      R_FEED(D_452, D_552, D_251, D_354_GO), R_EOD, R_FEED(D_450), R_FAIL(F_CLOSED)])
    s["unexpected-on-idle"] = relay_seed([R_FEED(D_OK)], lease=False)
    s["syntax-error"] = relay_seed([R_GROUP(1), R_FEED(D_MAIL_OK, D_GARBAGE)])
    s["wrong-kind"] = relay_seed([R_GROUP(1), R_FEED(D_MAIL_OK, D_RCPT_OK, D_OK)])
    s["too-many-commands"] = relay_seed([R_GROUP(5)], max_due=2)
    s["greeting-refused"] = relay_seed([R_CONNECT, R_FEED(D_554_NOSERVICE)], prelude=P_NONE, lease=False)
    s["lazy-owner"] = relay_seed([R_GROUP(2), R_AUTO(4), R_PUMP, R_PUMP, R_MAIL(), R_PUMP, R_PUMP, R_FAIL(F_SEND), R_PUMP, R_PUMP, R_PUMP],
                                 lazy=True)
    s["split-pieces"] = relay_seed([R_GROUP(2), R_FEED(D_MAIL_OK, D_250_ML), R_PIECE(2), R_FEED(D_RCPT_OK, D_354_GO),
                                    R_EOD, R_PIECE(17), R_FEED(D_LONG_OK), R_GROUP(1), R_PIECE(0),
                                    R_FEED(D_550_ML, D_250_BARE_LF, D_LONG_BAD)], piece=1)
    s["refusals-and-paths"] = relay_seed([R_MAIL(M_SENDER, PAR_SIZE | SZ_1001), R_MAIL(M_257), R_MAIL(M_UTF8, PAR_UTF8),
                                          R_RCPT(M_257), R_RCPT(M_256), bytes([7, M_RAW, 5]) + b"x y\r@", R_RCPT(M_EMPTY),
                                          R_DATA, R_EOD] + [R_AUTO()] * 6 + [R_EOD, R_AUTO()],
                                         prelude=P_NO_PIPELINING)
    s["two-transactions-long-helo"] = relay_seed([R_GROUP(1), R_AUTO(3), R_EOD, R_AUTO(), R_GROUP(2, null_sender=True),
                                                  R_AUTO(4), R_EOD, R_AUTO(), R_RELEASE], helo=3)
    s["partial-send"] = relay_seed([R_GROUP(2), R_SENT(5), R_SENT(7), R_FEED(D_MAIL_OK, D_RCPT_OK), R_SENT(1), R_SENT()])
    s["bad-bytes"] = relay_seed([R_GROUP(1), R_RAW(b"250 ok\x00\r\n"), R_FEED(D_NUL)])
    # Released from inside a failure's first 451: nothing more for that lease
    # (the relay once went on with the failure's other REPLYs and LOST).
    s["release-mid-failure"] = bytes.fromhex("1a00000a0a0c000d0f")
    s["release-mid-failure-lost"] = bytes.fromhex("1a00000601000c000d0f")
    return s


# ---- fuzz_proxy: h[0] = split-length count | accepted versions << 3 ----
PX_ZEROED, PX_V1, PX_V2, PX_BOTH = range(4)
PX_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PX_AFTER = b"EHLO client.example.org\r\n"
PX_INET = bytes([192, 0, 2, 1, 198, 51, 100, 7, 0xdb, 0xc4, 0, 25])
PX_INET6 = bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000000025" "9c40024b")


def proxy_seed(data, mode=PX_BOTH, chunks=b""):
    return bytes([len(chunks) | mode << 3]) + chunks + data


def px_v2(ver_cmd, fam, block, declared=None):
    n = len(block) if declared is None else declared
    return PX_SIG + bytes([ver_cmd, fam, n >> 8, n & 0xff]) + block


def px_tlv(t, value):
    return bytes([t, len(value) >> 8, len(value) & 0xff]) + value


def proxy_seeds():
    s = {}
    worst = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    s["v1-tcp4"] = proxy_seed(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n" + PX_AFTER)
    s["v1-tcp4-max"] = proxy_seed(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n" + PX_AFTER,
                                  chunks=b"\x03\x00\x81")
    s["v1-tcp6"] = proxy_seed(b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n" + PX_AFTER, mode=PX_V1)
    s["v1-tcp6-forms"] = proxy_seed(b"PROXY TCP6 ::ffff:192.0.2.1 2001:DB8:0:0:0:0:0:25 0 587\r\n" + PX_AFTER,
                                    mode=PX_ZEROED, chunks=b"\x05")
    s["v1-tcp6-longest"] = proxy_seed(b"PROXY TCP6 " + worst + b" " + worst + b" 65535 65535\r\n" + PX_AFTER)
    s["v1-unknown"] = proxy_seed(b"PROXY UNKNOWN\r\n" + PX_AFTER)
    s["v1-unknown-worst"] = proxy_seed(b"PROXY UNKNOWN " + worst + b" " + worst + b" 65535 65535\r\n" + PX_AFTER)
    s["v1-too-long"] = proxy_seed(b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n" + PX_AFTER)
    s["v1-bad-address"] = proxy_seed(b"PROXY TCP4 192.0.2.01 198.51.100.256 1 2\r\n" + PX_AFTER)
    s["v1-bad-port"] = proxy_seed(b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 025\r\n" + PX_AFTER)
    s["v1-bare-lf"] = proxy_seed(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n" + PX_AFTER, chunks=b"\x00")
    s["v1-two-spaces"] = proxy_seed(b"PROXY TCP6  ::1 ::1 1 2\r\n" + PX_AFTER)
    s["v2-inet"] = proxy_seed(px_v2(0x21, 0x11, PX_INET) + PX_AFTER)
    s["v2-inet-split"] = proxy_seed(px_v2(0x21, 0x11, PX_INET) + PX_AFTER, mode=PX_V2, chunks=b"\x02\x0b\x00")
    s["v2-inet6-tlvs"] = proxy_seed(px_v2(0x21, 0x21, PX_INET6 + px_tlv(0x01, b"smtp") + px_tlv(0x02, b"mx.example.net")
                                          + px_tlv(0x04, b"") + px_tlv(0x05, bytes(range(128)))
                                          + px_tlv(0x20, b"\x01\x00\x00\x00\x00" + px_tlv(0x21, b"TLSv1.3")))
                                    + PX_AFTER, chunks=b"\x04\x81")
    s["v2-unspec"] = proxy_seed(px_v2(0x21, 0x00, PX_INET) + PX_AFTER)
    s["v2-unix"] = proxy_seed(px_v2(0x21, 0x31, b"/var/run/a".ljust(108, b"\x00") + b"/var/run/b".ljust(108, b"\x00")
                                    + px_tlv(0x04, b"..")) + PX_AFTER)
    s["v2-local"] = proxy_seed(px_v2(0x20, 0x00, b"") + PX_AFTER, mode=PX_ZEROED)
    s["v2-local-inet"] = proxy_seed(px_v2(0x20, 0x11, PX_INET) + PX_AFTER)
    s["v2-max-tlv"] = proxy_seed(px_v2(0x21, 0x11, PX_INET + px_tlv(0x04, b"\xee" * (4096 - 12 - 3))) + PX_AFTER,
                                 chunks=b"\xff\x90")
    s["v2-oversized"] = proxy_seed(px_v2(0x21, 0x11, PX_INET, declared=4097) + PX_AFTER)
    s["v2-too-short"] = proxy_seed(px_v2(0x21, 0x21, PX_INET) + PX_AFTER)
    s["v2-dgram"] = proxy_seed(px_v2(0x21, 0x12, PX_INET) + PX_AFTER)
    s["v2-bad-version"] = proxy_seed(px_v2(0x11, 0x11, PX_INET) + PX_AFTER)
    s["v2-bad-tlv"] = proxy_seed(px_v2(0x21, 0x11, PX_INET + px_tlv(0x01, b"smtp") + b"\x01\x00\x09smtp") + PX_AFTER)
    s["v2-cut-short"] = proxy_seed(px_v2(0x21, 0x21, PX_INET6 + px_tlv(0x02, b"mx"))[:40])
    s["v1-only-gets-v2"] = proxy_seed(px_v2(0x21, 0x11, PX_INET) + PX_AFTER, mode=PX_V1)
    s["v2-only-gets-v1"] = proxy_seed(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n" + PX_AFTER, mode=PX_V2)
    s["no-header-smtp"] = proxy_seed(PX_AFTER + b"MAIL FROM:<a@example.org>\r\n")
    s["no-header-empty-line"] = proxy_seed(b"\r\n" + PX_AFTER)
    s["no-header-tls"] = proxy_seed(bytes.fromhex("16030100a5010000a103035f1a") + bytes(range(0, 32)))
    return s


def write(target, seeds):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds, %d bytes" % (target, len(seeds), sum(len(v) for v in seeds.values())))


if __name__ == "__main__":
    write("fuzz_smtp", smtp_seeds())
    write("fuzz_scan", scan_seeds())
    write("fuzz_relay", relay_seeds())
    write("fuzz_proxy", proxy_seeds())
