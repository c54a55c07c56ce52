"""
spoolfmt - the spool's segment format (core/spool.h) written again in
Python, from the header's description: the tests write segments with it
and read them with mxgate, so the format is checked by two implementations.
"""
import os
import struct

SEG_MAGIC = 0x6773584D   # "MXsg"
REC_MAGIC = 0x7073584D   # "MXsp"
VERSION = 1
MSG, RCPT, TRY, DONE = 1, 2, 3, 4

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _str16(b):
    return struct.pack("<H", len(b)) + b


class Segment:
    """A segment file being written: records appended at aligned offsets."""

    def __init__(self, path, nonce=None, worker=0, created_ms=1767225600000):
        self.path = path
        self.nonce = nonce if nonce is not None else int.from_bytes(os.urandom(8), "little")
        head = struct.pack("<IB3xQQI", SEG_MAGIC, VERSION, self.nonce, created_ms, worker)
        self.data = bytearray(head + struct.pack("<I", crc32c(head)))

    def _record(self, rtype, payload):
        off = len(self.data)
        assert off % 8 == 0
        seed = (self.nonce ^ (self.nonce >> 32)) & 0xFFFFFFFF
        crc = crc32c(struct.pack("<Q", off), seed)
        crc = crc32c(payload, crc)
        fields = struct.pack("<BBHI", VERSION, rtype, 0, len(payload))
        crc = crc32c(fields, crc)
        rec = struct.pack("<I", REC_MAGIC) + fields + struct.pack("<I", crc) + payload
        rec += b"\0" * (-len(rec) % 8)
        self.data += rec
        return off

    @staticmethod
    def _id(mid):
        session, number = mid
        return struct.pack("<QI", session, number)

    def msg(self, mid, sender, rcpts, body, client=b"192.0.2.7", helo=b"client.test", arrival_ms=1767225600000,
            flags=0):
        p = self._id(mid) + struct.pack("<QBBH", arrival_ms, flags, 0, len(rcpts))
        p += _str16(sender) + bytes([len(client)]) + client + _str16(helo)
        for r in rcpts:
            p += _str16(r)
        p += struct.pack("<I", len(body)) + body
        return self._record(MSG, p)

    def rcpt(self, mid, index, code):
        return self._record(RCPT, self._id(mid) + struct.pack("<HH", index, code))

    def attempt(self, mid, attempts, next_ms, code, text):
        return self._record(TRY, self._id(mid) + struct.pack("<IQH", attempts, next_ms, code) + _str16(text))

    def done(self, mid):
        return self._record(DONE, self._id(mid))

    def save(self, tail=b""):
        with open(self.path, "wb") as f:
            f.write(bytes(self.data) + tail)
