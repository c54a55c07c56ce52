"""
logfmt - a strict parser (and the matching encoder) for mxgate's log lines.

A line is one or more `key=value` pairs separated by single spaces, nothing
before the first or after the last. A key is one or more of [A-Za-z0-9_.-]
and appears at most once in a line. A value is either

  bare    zero or more printable ASCII characters other than space, `=`,
          `"` and `\\` (0x21-0x7e less those three), or
  quoted  `"` ... `"` holding printable ASCII (space and `=` included) other
          than `"` and `\\`, and the escapes `\\"`, `\\\\`, `\\n`, `\\r`, `\\t`
          and `\\xNN` (two hex digits: a control byte or a non-ASCII byte).

Anything else (a raw control or non-ASCII byte, a stray quote, a double space,
a trailing space, an unknown escape, a key without `=`) is an error: parse()
raises LogfmtError naming the column.

encode(value) writes a value the way mxgate must: bare unless it holds a
space, `=`, `"`, `\\`, a control byte (0x00-0x1f, 0x7f) or a non-ASCII byte,
quoted with the escapes above otherwise. parse(line, canonical=True)
additionally requires every value to be written exactly that way (the one
liberty: an empty value may be `key=` or `key=""`, and hex digits may be
either case).

Values are returned as str: the bytes a value stands for, decoded as UTF-8
with surrogateescape (so \\xNN of a lone byte survives a round trip).
"""
import re

__all__ = ["LogfmtError", "parse", "parse_lines", "encode", "KEY_RE"]

KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_BARE_CH = frozenset(c for c in range(0x21, 0x7f) if chr(c) not in '="\\')
_QUOTED_CH = frozenset(c for c in range(0x20, 0x7f) if chr(c) not in '"\\')
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESC = {'"': 0x22, "\\": 0x5c, "n": 0x0a, "r": 0x0d, "t": 0x09}


class LogfmtError(ValueError):
    def __init__(self, line, col, why):
        self.line, self.col, self.why = line, col, why
        shown = line if len(line) <= 300 else line[:300] + "..."
        super().__init__("logfmt: %s at column %d in %r" % (why, col, shown))


def _needs_quotes(b):
    return not b or any(c not in _BARE_CH for c in b)


def encode(value):
    """The logfmt form of a value (str or bytes)."""
    b = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    if b and not _needs_quotes(b):
        return b.decode("ascii")
    if not b:
        return ""
    out = ['"']
    for c in b:
        if c == 0x22:
            out.append('\\"')
        elif c == 0x5c:
            out.append("\\\\")
        elif c == 0x0a:
            out.append("\\n")
        elif c == 0x0d:
            out.append("\\r")
        elif c == 0x09:
            out.append("\\t")
        elif c in _QUOTED_CH:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    out.append('"')
    return "".join(out)


def parse(line, canonical=False):
    """{key: value} of one log line (without its line end); LogfmtError if
    the line is not strict logfmt (see the module text)."""
    if line.endswith("\n"):
        line = line[:-1]
    n = len(line)
    if n == 0:
        raise LogfmtError(line, 0, "empty line")
    out = {}
    i = 0
    while True:
        m = KEY_RE.match(line, i)
        if not m:
            raise LogfmtError(line, i, "expected a key of [A-Za-z0-9_.-]")
        key = m.group(0)
        i = m.end()
        if i >= n or line[i] != "=":
            raise LogfmtError(line, i, "expected '=' after key %r" % key)
        i += 1
        vstart = i
        if i < n and line[i] == '"':
            i += 1
            buf = bytearray()
            while True:
                if i >= n:
                    raise LogfmtError(line, i, "unterminated quoted value of %r" % key)
                ch = line[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    if i + 1 >= n:
                        raise LogfmtError(line, i, "backslash at the end of the line")
                    e = line[i + 1]
                    if e in _SIMPLE_ESC:
                        buf.append(_SIMPLE_ESC[e])
                        i += 2
                    elif e == "x":
                        hx = line[i + 2:i + 4]
                        if len(hx) != 2 or not all(h in _HEX for h in hx):
                            raise LogfmtError(line, i, "bad \\x escape")
                        buf.append(int(hx, 16))
                        i += 4
                    else:
                        raise LogfmtError(line, i, "unknown escape \\%s" % e)
                    continue
                o = ord(ch)
                if o not in _QUOTED_CH:
                    raise LogfmtError(line, i, "raw byte %r inside a quoted value" % ch)
                buf.append(o)
                i += 1
            value = bytes(buf)
        else:
            while i < n and line[i] != " ":
                if ord(line[i]) not in _BARE_CH:
                    raise LogfmtError(line, i, "character %r in a bare value (must be quoted)"
                                      % line[i])
                i += 1
            value = line[vstart:i].encode("ascii")
        raw = line[vstart:i]
        if canonical:
            want = encode(value)
            ok = raw == want or (value == b"" and raw in ("", '""')) or raw.lower() == want.lower()
            if not ok:
                raise LogfmtError(line, vstart, "value of %r written as %s, the logfmt way is %s"
                                  % (key, raw, want))
        if key in out:
            raise LogfmtError(line, m.start(), "duplicate key %r" % key)
        out[key] = value.decode("utf-8", "surrogateescape")
        if i == n:
            return out
        if line[i] != " ":
            raise LogfmtError(line, i, "expected a single space after the value of %r" % key)
        i += 1
        if i >= n:
            raise LogfmtError(line, i, "trailing space")


def parse_lines(text, canonical=False):
    """Every non-empty line of text parsed: a list of dicts (raises on the
    first bad line)."""
    return [parse(l, canonical) for l in text.splitlines() if l != ""]
