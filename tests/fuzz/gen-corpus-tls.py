#!/usr/bin/env python3
"""gen-corpus-tls.py - writes the seed corpus of fuzz_tls (tests/fuzz/corpus/fuzz_tls/).

Two kinds of seed, in the formats the comment at the top of fuzz_tls.c
describes:
  - peer: the header that picks the version, the client's offer, the
    chunking of both directions, the read capacity, corruption, KeyUpdate or
    renegotiation, resumption, followed by a realistic SMTP payload (the
    client's commands, then the server's replies);
  - raw: ciphertext as a client would send it: ClientHellos built here by
    hand (deterministic, unlike a real client's random and key share),
    truncated, oversized, or followed by what comes after them, and things
    that are not TLS at all.
A separate file from gen-corpus.py so the TLS target's format stays next to
its own generator. Run from anywhere; rewrites the seeds it knows and leaves
other files (ones libFuzzer merged in) alone.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_tls")

# ---- peer mode (h[0] bit 0 clear) ----
TLS13, TLS12 = 0, 2
CORRUPT, CLOSE, MIDWAY, RESUME = 0x10, 0x20, 0x40, 0x80
BIG, JUNK = 0x40, 0x80

SESSION = (b"EHLO client.example.org\r\n"
           b"MAIL FROM:<alice@example.org> SIZE=120\r\n"
           b"RCPT TO:<bob@example.net>\r\n"
           b"DATA\r\n"
           b"From: alice@example.org\r\nSubject: hello\r\n\r\nA short body.\r\n.\r\n"
           b"QUIT\r\n")
REPLIES = (b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250 8BITMIME\r\n"
           b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
           b"250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n")


def cap_byte(n):
    """The read-capacity byte for about n octets (read_cap in fuzz_tls.c)."""
    if n <= 128:
        return n - 1
    return 0x80 + min(127, (n - 1 + 135) // 136)


def chunk_len(n):
    """The chunk-length byte for exactly n octets (fuzzutil.h's coding)."""
    if 1 <= n <= 16:
        return n - 1
    assert (n - 1) % 8 == 0 and (n - 1) // 8 < 128, n
    return 0x80 + (n - 1) // 8


def peer_seed(version=TLS13, offer=0, flags=0, h1=0, cap=16384, c2s=(), s2c=(), pieces=(),
              corrupt_at=None, xor=0x01, payload=SESSION + REPLIES, data_sixteenths=None, rotations=0):
    """The client's data is the first k/16 of the payload (by default
    SESSION), the server's reply the rest; rotations: ticket-key rotations
    before a resumed connection."""
    h0 = version | offer << 2 | flags
    if corrupt_at is not None:
        h0 |= CORRUPT
        if corrupt_at < 4096:
            hi, lo = corrupt_at >> 8, corrupt_at & 0xff
        else:
            hi, lo = 0x80 | corrupt_at >> 8, corrupt_at & 0xff
    else:
        hi = lo = 0
    assert len(c2s) < 8 and len(s2c) < 8 and len(pieces) < 16
    if data_sixteenths is None:
        data_sixteenths = len(SESSION) * 16 // len(payload)
    h = bytes([h0, len(c2s) | len(s2c) << 3 | h1, cap_byte(cap), len(pieces) | data_sixteenths << 4, hi, lo, xor,
               rotations])
    return h + bytes(chunk_len(n) for n in c2s) + bytes(chunk_len(n) for n in s2c) + \
        bytes(chunk_len(n) for n in pieces) + payload


def peer_seeds():
    s = {}
    for v, vn in ((TLS13, "tls13"), (TLS12, "tls12")):
        for o in range(4):
            s["%s-offer%d" % (vn, o)] = peer_seed(v, o)
        s[vn + "-bytewise"] = peer_seed(v, c2s=[1], s2c=[1], cap=1)
        s[vn + "-mixed-chunks"] = peer_seed(v, 1, c2s=[5, 1, 1017, 2, 16], s2c=[3, 201, 1], cap=7,
                                            pieces=[1, 9, 3, 65])
        s[vn + "-record-header-split"] = peer_seed(v, 3, c2s=[5, 1, 4], s2c=[5], cap=100)
        s[vn + "-big"] = peer_seed(v, 2, h1=BIG, c2s=[1017, 9], s2c=[1017], pieces=[1017, 1, 1009],
                                   cap=17000)
        s[vn + "-big-small-reads"] = peer_seed(v, 0, h1=BIG, c2s=[1017], cap=33, pieces=[])
        s[vn + "-close"] = peer_seed(v, 0, CLOSE, c2s=[7], s2c=[16])
        s[vn + "-midway"] = peer_seed(v, 1, MIDWAY, pieces=[16, 1017], cap=64)
        s[vn + "-resume"] = peer_seed(v, 0, RESUME | CLOSE, c2s=[3, 1017])
        # the ticket sealed by the key before (resumed, renewed), and by one
        # too old (a full handshake)
        s[vn + "-resume-previous-key"] = peer_seed(v, 1, RESUME, c2s=[1017, 1], rotations=1)
        s[vn + "-resume-retired-key"] = peer_seed(v, 2, RESUME | CLOSE, rotations=2)
        s[vn + "-junk"] = peer_seed(v, 0, 0, h1=JUNK)
        s[vn + "-no-data"] = peer_seed(v, 2, CLOSE, data_sixteenths=0)
        s[vn + "-mostly-data"] = peer_seed(v, 3, 0, payload=SESSION, data_sixteenths=15)
        # The ClientHello's record header and handshake header, its
        # version, random, cipher list and extensions; the client's second
        # flight; its first data records.
        for at in (0, 1, 3, 4, 5, 8, 9, 11, 44, 80, 120, 200, 250, 300, 330, 400, 450):
            s["%s-corrupt-%d" % (vn, at)] = peer_seed(v, at % 4, corrupt_at=at, xor=0x01 if at % 2 else 0xff,
                                                      c2s=[1017] if at % 3 else [1])
        s[vn + "-corrupt-resumption"] = peer_seed(v, 0, RESUME, corrupt_at=250, xor=0x40)
    s["tls13-keyupdate-bytewise"] = peer_seed(TLS13, 0, MIDWAY | CLOSE, c2s=[1], s2c=[1], pieces=[2, 3])
    # 1-octet writes of BIG_LEN: MAX_PIECES records, then the rest in one
    # (the fuzzer's first find: without the cap, a megabyte of ciphertext)
    s["tls13-big-bytewise-pieces"] = peer_seed(TLS13, 0, RESUME, h1=BIG, c2s=[1], s2c=[1], pieces=[1], cap=106,
                                               corrupt_at=871, xor=0x4c)
    s["tls12-big-bytewise-pieces"] = peer_seed(TLS12, 1, CLOSE, h1=BIG, c2s=[1], s2c=[1], pieces=[1], cap=1)
    return s


# ---- raw mode (h[0] bit 0 set) ----

def raw_seed(ct, chunks=(), cap=16384):
    assert len(chunks) < 8
    return bytes([1 | len(chunks) << 1, cap_byte(cap)]) + bytes(chunk_len(n) for n in chunks) + ct


def u8(n):
    return bytes([n])


def u16(n):
    return struct.pack(">H", n)


def u24(n):
    return struct.pack(">I", n)[1:]


def vec8(b):
    return u8(len(b)) + b


def vec16(b):
    return u16(len(b)) + b


def ext(t, body):
    return u16(t) + vec16(body)


def record(ctype, body, version=0x0303):
    return u8(ctype) + u16(version) + vec16(body)


def handshake(mtype, body):
    return u8(mtype) + u24(len(body)) + body


SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805]


def client_hello(tls13=True, ciphers=None, key_share=None, extra_exts=b"", session_id=bytes(range(32)),
                 groups=(0x001d, 0x0017)):
    rnd = bytes((i * 37 + 11) & 0xff for i in range(32))
    if ciphers is None:
        ciphers = [0x1302, 0x1301, 0x1303, 0xc02c, 0xc02b, 0xcca9, 0xc030, 0x009c] if tls13 else \
            [0xc02c, 0xc02b, 0xcca9, 0xc030, 0xcca8, 0xc009, 0x009c, 0x003c, 0x00ff]
    exts = ext(0, vec16(u8(0) + vec16(b"localhost")))                    # server_name
    exts += ext(10, vec16(b"".join(u16(g) for g in groups)))             # supported_groups
    exts += ext(11, vec8(b"\x00"))                                        # ec_point_formats
    exts += ext(13, vec16(b"".join(u16(a) for a in SIGALGS)))            # signature_algorithms
    exts += ext(23, b"") + ext(22, b"") + ext(35, b"")                    # ems, etm, session_ticket
    if tls13:
        exts += ext(43, vec8(u16(0x0304) + u16(0x0303)))                  # supported_versions
        exts += ext(45, vec8(b"\x01"))                                    # psk_key_exchange_modes
        if key_share is None:
            key_share = u16(0x001d) + vec16(bytes((9 * i + 1) & 0xff for i in range(32)))
        exts += ext(51, vec16(key_share))                                 # key_share
    exts += extra_exts
    body = u16(0x0303) + rnd + vec8(session_id) + vec16(b"".join(u16(c) for c in ciphers)) + vec8(b"\x00") + \
        vec16(exts)
    return handshake(1, body)


def raw_seeds():
    s = {}
    ch13 = client_hello(True)
    ch12 = client_hello(False)
    rec13 = record(0x16, ch13, 0x0301)
    rec12 = record(0x16, ch12, 0x0301)
    s["raw-ch13"] = raw_seed(rec13)
    s["raw-ch12"] = raw_seed(rec12)
    s["raw-ch13-bytewise"] = raw_seed(rec13, [1])
    s["raw-ch12-chunks"] = raw_seed(rec12, [5, 1, 3, 65], cap=1)
    # a ClientHello over two records, and two in one
    s["raw-ch13-fragmented"] = raw_seed(record(0x16, ch13[:40], 0x0301) + record(0x16, ch13[40:], 0x0301), [16])
    s["raw-ch12-twice"] = raw_seed(rec12 + rec12)
    s["raw-ch13-truncated"] = raw_seed(rec13[:60])
    s["raw-ch13-header-only"] = raw_seed(rec13[:5])
    s["raw-ch-length-lies"] = raw_seed(record(0x16, ch12[:4] + b"\x00" * 8, 0x0301))
    # TLS 1.3 then the client's second flight: CCS, an "encrypted" Finished
    s["raw-ch13-then-finished"] = raw_seed(rec13 + record(0x14, b"\x01") +
                                           record(0x17, bytes((7 * i) & 0xff for i in range(53))), [1017, 5])
    # TLS 1.2 with RSA key exchange: ClientKeyExchange (a premaster below
    # the modulus that does not decrypt: implicit rejection), CCS, a
    # Finished that cannot be right
    rsa = record(0x16, client_hello(False, ciphers=[0x003c, 0x009c]), 0x0301)
    cke = record(0x16, handshake(16, vec16(b"\x00\x02" + bytes((13 * i + 5) & 0xff for i in range(254)))))
    s["raw-ch12-rsa-cke"] = raw_seed(rsa + cke + record(0x14, b"\x01") + record(0x16, bytes(64)), [1017])
    # TLS 1.2 ECDHE: ClientKeyExchange with a point that is not on the curve
    cke_ec = record(0x16, handshake(16, vec8(b"\x04" + bytes(range(64)))))
    s["raw-ch12-ecdhe-bad-point"] = raw_seed(rec12 + cke_ec, [1017])
    # a key share for a group not offered, and none at all (HelloRetryRequest)
    s["raw-ch13-hrr"] = raw_seed(record(0x16, client_hello(True, key_share=b""), 0x0301))
    s["raw-ch13-bad-share"] = raw_seed(record(0x16, client_hello(True, key_share=u16(0x0017) + vec16(b"\x04" + bytes(64))),
                                              0x0301))
    s["raw-ch13-only-tls13-suites-tls12"] = raw_seed(record(0x16, client_hello(False, ciphers=[0x1301]), 0x0301))
    s["raw-ch13-psk-garbage"] = raw_seed(record(0x16, client_hello(
        True, extra_exts=ext(41, vec16(vec16(b"ticket-that-is-not") + struct.pack(">I", 0)) + vec16(vec8(bytes(32))))),
        0x0301))
    s["raw-sslv2-hello"] = raw_seed(b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" +
                                    b"\x00\x00\x39\x00\x00\x38\x00\x00\x35\x00\x00\x16\x00\x00\x13\x00\x00\x0a\x07\x00\xc0" +
                                    bytes(16))
    s["raw-oversized-record"] = raw_seed(b"\x16\x03\x01\xff\xff" + ch12[:64])
    s["raw-empty-records"] = raw_seed(b"\x16\x03\x01\x00\x00" * 40 + rec12)
    s["raw-alert-first"] = raw_seed(record(0x15, b"\x02\x28", 0x0301) + rec12)
    s["raw-ccs-first"] = raw_seed(record(0x14, b"\x01", 0x0301) + rec13)
    s["raw-appdata-first"] = raw_seed(record(0x17, b"hello", 0x0301))
    s["raw-heartbeat"] = raw_seed(record(0x18, b"\x01\x40\x00" + bytes(16), 0x0301))
    s["raw-plain-smtp"] = raw_seed(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n", [3])
    s["raw-http"] = raw_seed(b"GET / HTTP/1.1\r\nHost: mx.example.net\r\n\r\n")
    s["raw-empty"] = raw_seed(b"")
    return s


def write(seeds):
    os.makedirs(ROOT, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(ROOT, name), "wb") as f:
            f.write(data)
    print("fuzz_tls: %d seeds, %d bytes" % (len(seeds), sum(len(v) for v in seeds.values())))


if __name__ == "__main__":
    seeds = peer_seeds()
    seeds.update(raw_seeds())
    write(seeds)
