"""
dsncheck - a bounce (core/dsn.h) read back by Python's email package: a
second, independent parser of what mxgate sends to a sender.

    python3 tests/integration/dsncheck.py < bounce.eml

reads a DSN in SMTP wire form (CRLF, dot-stuffed, without the final ".")
on stdin, checks it and prints a JSON summary:

    {"final_recipients": ["bob@example.com"], "statuses": ["5.1.1"],
     "actions": ["failed"]}

(the recipients without their "rfc822;" type). A DSN that is not
well-formed raises AssertionError: exit status 1. Tests import check() to
do the same on bytes they hold, e.g. a message the sink received.
"""
import email
import email.policy
import json
import sys

LINE_MAX = 998


def unstuff(data):
    """Wire form to message octets: a leading '.' of a line is dropped."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def check_wire(data):
    """CR and LF only as CRLF, lines within LINE_MAX, every '.' stuffed,
    a whole last line, no final dot (the sender adds it)."""
    assert data.endswith(b"\r\n"), "the last line has no CRLF"
    lines = data[:-2].split(b"\r\n")
    for n, line in enumerate(lines):
        assert b"\r" not in line and b"\n" not in line, f"line {n}: bare CR or LF"
        assert len(line) <= LINE_MAX, f"line {n}: {len(line)} octets"
        if line.startswith(b"."):
            assert line.startswith(b".."), f"line {n}: '.' not stuffed"
    assert lines[-1] != b".", "ends with the final dot"


def _no_defects(part, what):
    assert not part.defects, f"{what}: {part.defects}"


def check(data):
    """Check a wire-form DSN; returns the summary as a dict."""
    check_wire(data)
    msg = email.message_from_bytes(unstuff(data), policy=email.policy.default)
    _no_defects(msg, "message")
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status", msg.get_param("report-type")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"].addresses[0].username == "MAILER-DAEMON"
    parts = msg.get_payload()
    assert len(parts) == 3, f"{len(parts)} parts"
    for n, part in enumerate(parts):
        _no_defects(part, f"part {n + 1}")
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    assert parts[2].get_content_type() == "text/rfc822-headers"

    blocks = parts[1].get_payload()
    assert len(blocks) >= 2, "no recipient block"
    assert blocks[0]["Reporting-MTA"], "no Reporting-MTA"
    assert blocks[0]["Arrival-Date"], "no Arrival-Date"
    summary = {"final_recipients": [], "statuses": [], "actions": []}
    for n, blk in enumerate(blocks[1:]):
        final, status, action = blk["Final-Recipient"], blk["Status"], blk["Action"]
        assert final and status and action, f"recipient block {n}: {list(blk.keys())}"
        kind, _, addr = str(final).partition(";")
        assert kind.strip().lower() == "rfc822", final
        summary["final_recipients"].append(addr.strip())
        summary["statuses"].append(str(status))
        summary["actions"].append(str(action))
    return summary


def main():
    print(json.dumps(check(sys.stdin.buffer.read())))


if __name__ == "__main__":
    main()
