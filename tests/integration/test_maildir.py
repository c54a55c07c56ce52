"""
The default delivery: no downstream, every accepted message written to a
Maildir (<maildir>/tmp then renamed into <maildir>/new) with a Received:
header first. Driven by the raw client and by swaks.
"""
import os
import shutil
import subprocess
import time

import pytest

from mxtest import make_message, new_msgid, send_mail


def _wait_files(d, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(os.listdir(d)) if os.path.isdir(d) else []
        if len(files) >= n or time.monotonic() > deadline:
            return [os.path.join(d, f) for f in files]
        time.sleep(0.05)


def _canon(b):
    return b.replace(b"\r\n", b"\n")


def _check_maildir(md, ids):
    files = _wait_files(os.path.join(md, "new"), len(ids))
    assert len(files) == len(ids), (files, os.listdir(md))
    contents = [open(f, "rb").read() for f in files]
    for mid in ids:
        hits = [c for c in contents if mid.encode() in c]
        assert len(hits) == 1, (mid, len(hits))
    for c in contents:
        assert c.startswith(b"Received:"), c[:200]
    tmp = os.path.join(md, "tmp")
    assert not os.path.isdir(tmp) or not os.listdir(tmp), "left in tmp/: %r" % os.listdir(tmp)
    return files, contents


def test_maildir_delivery(tmp_path, gateway):
    md = str(tmp_path / "md")
    gw = gateway(maildir=md, relay_domains="localhost")
    ids = [new_msgid("md1"), new_msgid("md2")]
    body = b"Maildir body line\r\n.leading dot stays one dot\r\n8-bit: \xc3\xa9\r\n"
    for mid in ids:
        r = send_mail(gw.port, rcpts=["user@localhost"], msg=make_message(mid, body=body),
                      mail_params="BODY=8BITMIME")
        assert r.delivered, r
    files, contents = _check_maildir(md, ids)
    for c in contents:
        assert _canon(body) in _canon(c), c
        assert b"\n..leading" not in _canon(c), "stored dot-stuffed"
    assert len(set(os.path.basename(f) for f in files)) == 2


def test_maildir_default_directory_is_dot_mail(tmp_path, gateway):
    """No --maildir: ./mail relative to the working directory."""
    work = tmp_path / "cwd"
    work.mkdir()
    gw = gateway(maildir=None, cwd=str(work), relay_domains="localhost")
    mid = new_msgid("dflt")
    r = send_mail(gw.port, rcpts=["user@localhost"], msg=make_message(mid, body=b"default dir\r\n"))
    assert r.delivered, r
    _, contents = _check_maildir(str(work / "mail"), [mid])
    assert b"default dir" in contents[0]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_maildir_delivery_with_swaks(tmp_path, gateway):
    md = str(tmp_path / "md")
    gw = gateway(maildir=md, relay_domains="localhost")
    mid = new_msgid("swaks")
    body = "Delivered by swaks %s" % mid
    p = subprocess.run(
        ["swaks", "--to", "user@localhost", "--from", "sender@src.test",
         "--server", "127.0.0.1:%d" % gw.port, "--helo", "swaks.test",
         "--header", "Message-ID: %s" % mid, "--body", body, "--timeout", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out
    assert "<-  250" in out, out
    _, contents = _check_maildir(md, [mid])
    assert body.encode() in contents[0]


def test_env_and_config_file(tmp_path, gateway):
    """MXGATE_* variables and --config set keys like flags do."""
    md_env = tmp_path / "md-env"
    gw = gateway(maildir=None, relay_domains=None,
                 env={"MXGATE_MAILDIR": str(md_env), "MXGATE_RELAY_DOMAINS": "localhost"})
    mid = new_msgid("env")
    r = send_mail(gw.port, rcpts=["user@localhost"], msg=make_message(mid))
    assert r.delivered, r
    _check_maildir(str(md_env), [mid])

    md_cfg = tmp_path / "md-cfg"
    cfg = tmp_path / "mxgate.conf"
    cfg.write_text("maildir = %s\nrelay_domains = localhost\n" % md_cfg)
    gw2 = gateway(maildir=None, relay_domains=None, config=str(cfg))
    mid = new_msgid("cfg")
    r = send_mail(gw2.port, rcpts=["user@localhost"], msg=make_message(mid))
    assert r.delivered, r
    _check_maildir(str(md_cfg), [mid])
