"""
The DNS fixture itself (dnsserver.DnsServer, a real unbound), checked with
the fixture's own pure-Python client, before any test leans on it.
"""
import socket
import time

import pytest

from dnsserver import NOERROR, NXDOMAIN, SERVFAIL, DnsServer, dns_query, unbound_available

pytestmark = pytest.mark.skipif(not unbound_available(),
                                reason="unbound is not installed (make deps)")

RECORDS = {
    "Example.com": [("TXT", "v=spf1 -all"), ("A", "192.0.2.1", 60), ("MX", "10 mx.example.com"),
                    ("AAAA", "2001:db8::1", 3600)],
    "long.example.com": [("TXT", "x" * 300 + "y" * 300)],
    "multi.example.com": [("TXT", ["v=spf1 ip4:", "192.0.2.5 -all"])],
    "alias.example.com": [("CNAME", "Example.com")],
    "4.3.2.1.in-addr.arpa": [("PTR", "Mail.example.com")],
    "2.0.192.in-addr.arpa": [("PTR", "testnet.example.com")],
    "slow.example.com": [("TXT", "v=spf1 ?all", 120)],
    "sub.slow.example.com": [("A", "192.0.2.9")],
}


@pytest.fixture
def dns(tmp_path):
    with DnsServer(tmp_path, RECORDS, servfail=["slow.example.com", "broken.example.net"]) as d:
        yield d


def answers(addr, name, qtype, **kw):
    rcode, ans = dns_query(addr, name, qtype, **kw)
    assert rcode == NOERROR, (name, qtype, rcode)
    return ans


def test_record_types_and_ttls(dns):
    assert dns.addr == "127.0.0.1:%d" % dns.port
    assert answers(dns.addr, "example.com", "TXT") == [("TXT", (b"v=spf1 -all",), 300)]
    assert answers(dns.addr, "EXAMPLE.COM", "A") == [("A", "192.0.2.1", 60)]
    assert answers(dns.addr, "example.com", "AAAA") == [("AAAA", "2001:db8::1", 3600)]
    assert answers(dns.addr, "example.com", "MX") == [("MX", "10 mx.example.com.", 300)]
    assert answers(dns.addr, "4.3.2.1.in-addr.arpa", "PTR") == [("PTR", "Mail.example.com.", 300)]
    # unbound's own default zone for 192.0.2.0/24 does not hide given data
    assert answers(dns.addr, "2.0.192.in-addr.arpa", "PTR")[0][1] == "testnet.example.com."


def test_txt_strings(dns):
    (t,) = answers(dns.addr, "multi.example.com", "TXT")
    assert t[1] == (b"v=spf1 ip4:", b"192.0.2.5 -all")
    # over 255 octets: several strings of one record; over 512 octets in all,
    # so the UDP answer is truncated and the client asks again over TCP
    for tcp in (False, True):
        (t,) = answers(dns.addr, "long.example.com", "TXT", tcp=tcp)
        assert [len(s) for s in t[1]] == [255, 255, 90]
        assert b"".join(t[1]) == b"x" * 300 + b"y" * 300


def test_negative_answers_and_cname(dns):
    assert dns_query(dns.addr, "nothing.example.com", "A") == (NXDOMAIN, [])
    assert dns_query(dns.addr, "example.com", "PTR") == (NOERROR, [])
    # chased as a recursive resolver does (unbound lower-cases the target)
    (cn, a) = answers(dns.addr, "alias.example.com", "A")
    assert (cn[0], cn[1].lower(), cn[2]) == ("CNAME", "example.com.", 300)
    assert a == ("A", "192.0.2.1", 60)


def test_servfail_is_fast(dns):
    for name, qtype in [("broken.example.net", "TXT"), ("x.broken.example.net", "A"),
                        ("slow.example.com", "A")]:
        t0 = time.monotonic()
        assert dns_query(dns.addr, name, qtype, timeout=2) == (SERVFAIL, []), name
        assert time.monotonic() - t0 < 0.5
    # a servfail name's own records are answered; a name below it with
    # records of its own is an ordinary name
    assert answers(dns.addr, "slow.example.com", "TXT") == [("TXT", (b"v=spf1 ?all",), 120)]
    assert answers(dns.addr, "sub.slow.example.com", "A") == [("A", "192.0.2.9", 300)]
    assert dns_query(dns.addr, "sub.slow.example.com", "TXT") == (NOERROR, [])


def test_pause_resume_and_query_count(dns):
    n0 = dns.query_count()
    answers(dns.addr, "example.com", "A")
    answers(dns.addr, "example.com", "TXT")
    assert dns.query_count() == n0 + 2
    assert ("example.com.", "TXT") in dns.queries()
    dns.pause()
    try:
        with pytest.raises(socket.timeout):
            dns_query(dns.addr, "example.com", "A", timeout=0.5)
    finally:
        dns.resume()
    assert answers(dns.addr, "example.com", "A", timeout=2)[0][1] == "192.0.2.1"
    # the query sent while paused is read (and counted) after SIGCONT
    deadline = time.monotonic() + 2
    while dns.query_count() < n0 + 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dns.query_count() == n0 + 4


def test_stop_ends_the_server(tmp_path):
    d = DnsServer(tmp_path, RECORDS).start()
    addr, proc = d.addr, d.proc
    d.stop()
    assert proc.poll() is not None
    with pytest.raises((socket.timeout, OSError)):
        dns_query(addr, "example.com", "A", timeout=0.3)
    d.stop()   # twice is fine


def test_ipv6(tmp_path):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    with DnsServer(tmp_path, RECORDS, ipv6=True) as d:
        assert d.addr == "[::1]:%d" % d.port
        assert answers(d.addr, "example.com", "A") == [("A", "192.0.2.1", 60)]
