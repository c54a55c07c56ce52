"""
`mxgate queue` offline on a spool directory: segments written by
spoolfmt.py (a second implementation of core/spool.h's format) are listed
as Postfix's mailq would (pending messages only, recipients done marked,
the last attempt), in text and JSON; a torn tail and a damaged record are
reported and skipped; delete ID and delete ALL append DONE records that a
later list honours; a spool whose lock is held is not touched.
"""
import fcntl
import json
import os
import subprocess

import pytest

from mxtest import BINARY
from spoolfmt import Segment


def queue(*args, check=None):
    p = subprocess.run([BINARY, "queue", *args], capture_output=True, text=True, timeout=30)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


A = (0x8F3A2B1C4D5E6F70, 1)
B = (0x8F3A2B1C4D5E6F70, 2)
C = (0x0000000000000042, 7)
D = (0x1122334455667788, 3)


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    s1 = Segment(str(d / "w0-00000001.seg"), worker=0)
    s1.msg(A, b"alice@example.org", [b"bob@example.com", b"carol@example.com"], b"Subject: a\r\n\r\nA\r\n")
    s1.rcpt(A, 1, 250)                              # carol done, bob not
    s1.attempt(A, 2, 1767229200000, 451, b"4.4.1 downstream unavailable")
    s1.msg(B, b"", [b"postmaster@example.com"], b"")  # the null sender
    s1.done(B)
    s1.save()
    s2 = Segment(str(d / "w1-00000001.seg"), worker=1)
    s2.msg(C, b"x\x01y@example.org", [b"d@example.com"], b"body" * 100)
    s2.msg(D, b"e@example.org", [b"f@example.com", b"g@example.com"], b"x")
    s2.rcpt(D, 0, 250)
    s2.rcpt(D, 1, 550)                              # every recipient done: not pending
    s2.save(tail=b"MXsp\x01\x01\x00\x00\xff")       # a torn record at the end
    (d / "README").write_text("not a segment\n")
    return d


def test_list_shows_what_is_pending(spool):
    p = queue("list", "--spool-dir", str(spool), check=0)
    out = p.stdout
    assert "8f3a2b1c4d5e6f70-1" in out and "0000000000000042-7" in out, out
    assert "8f3a2b1c4d5e6f70-2" not in out and "1122334455667788-3" not in out, out
    assert "<alice@example.org>" in out and "    <bob@example.com>\n" in out, out
    assert "    <carol@example.com>  done 250" in out, out
    assert 'attempts 2, next 2026-01-01T01:00:00Z, last "451 4.4.1 downstream unavailable"' in out, out
    assert "<x\\x01y@example.org>" in out, out     # a control octet never reaches the terminal
    assert out.strip().splitlines()[-1].startswith("-- 2 messages"), out
    assert "w1-00000001.seg: 9 octets at" in p.stderr and "a torn tail" in p.stderr, p.stderr


def test_list_json(spool):
    p = queue("list", "--spool-dir", str(spool), "--json", check=0)
    q = json.loads(p.stdout)
    assert [m["id"] for m in q] == ["8f3a2b1c4d5e6f70-1", "0000000000000042-7"]
    a = q[0]
    assert a["sender"] == "alice@example.org" and a["attempts"] == 2
    assert a["recipients"] == [{"address": "bob@example.com", "done": 0},
                               {"address": "carol@example.com", "done": 250}]
    assert a["last_reply"] == "451 4.4.1 downstream unavailable"
    assert a["arrival"] == "2026-01-01T00:00:00Z" and a["segment"] == "w0-00000001.seg"
    assert q[1]["sender"] == "x\x01y@example.org" and q[1]["size"] == 400


def test_a_damaged_record_costs_itself_only(spool):
    path = spool / "w0-00000001.seg"
    data = bytearray(path.read_bytes())
    data[32 + 40] ^= 0xFF                          # inside A's message record
    path.write_bytes(bytes(data))
    p = queue("list", "--spool-dir", str(spool), check=0)
    assert "8f3a2b1c4d5e6f70-1" not in p.stdout and "0000000000000042-7" in p.stdout, p.stdout
    assert "(damaged); skipped" in p.stderr, p.stderr


def test_delete_one_then_all(spool):
    before = (spool / "w0-00000001.seg").stat().st_size
    p = queue("delete", "8f3a2b1c4d5e6f70-1", "--spool-dir", str(spool), check=0)
    assert p.stdout == "8f3a2b1c4d5e6f70-1: deleted\n", p.stdout
    after = (spool / "w0-00000001.seg").stat().st_size
    assert after > before and after % 8 == 0
    out = queue("list", "--spool-dir", str(spool), check=0).stdout
    assert "8f3a2b1c4d5e6f70-1" not in out and "0000000000000042-7" in out, out
    # again: not in the queue any more
    p = queue("delete", "8f3a2b1c4d5e6f70-1", "--spool-dir", str(spool), check=1)
    assert "no such message" in p.stderr
    # ALL: the segment with the torn tail gets its record after it, aligned
    p = queue("delete", "ALL", "--spool-dir", str(spool), check=0)
    assert "0000000000000042-7: deleted" in p.stdout and "-- 1 message deleted" in p.stdout, p.stdout
    assert (spool / "w1-00000001.seg").stat().st_size % 8 == 0
    p = queue("list", "--spool-dir", str(spool), check=0)
    assert p.stdout.strip() == "-- the queue is empty", p.stdout


def test_delete_refused_while_the_spool_is_held(spool):
    with open(spool / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        p = queue("delete", "ALL", "--spool-dir", str(spool), check=1)
        assert "in use by a running mxgate" in p.stderr
    assert "0000000000000042-7" in queue("list", "--spool-dir", str(spool), check=0).stdout


@pytest.mark.parametrize("args,rc", [
    ((), 2), (("list",), 2), (("frobnicate", "--spool-dir", "/tmp"), 2), (("delete", "--spool-dir", "/tmp"), 2),
    (("delete", "not-an-id", "--spool-dir", "{spool}"), 2), (("list", "--spool-dir", "/nonexistent/spool"), 1),
    (("delete", "ffffffffffffffff-9", "--spool-dir", "{spool}"), 1),
])
def test_usage_and_failures(spool, args, rc):
    args = [a.replace("{spool}", str(spool)) for a in args]
    queue(*args, check=rc)


def test_an_empty_directory(tmp_path):
    p = queue("list", "--spool-dir", str(tmp_path), check=0)
    assert p.stdout == "-- the queue is empty\n"
    assert json.loads(queue("list", "--json", "--spool-dir", str(tmp_path), check=0).stdout) == []
