"""
DNSBL and DNSWL scoring against a real DNS server on 127.0.0.1 (unbound,
dnsserver.py) serving a blocklist zone and an allow-list zone. Clients
connect from different loopback addresses (127.0.0.5 is listed, and so on),
so each test can be a listed and an unlisted client at once. The lists are
under .example: unbound (and so libunbound) answers .test itself
(RFC 6761), which no DNSBL would ever use.

    bl.example   lists 127.0.0.5 (127.0.0.2) and 127.0.0.6 (127.0.0.11) and ::1
    zen.example  lists 127.0.0.5 (127.0.0.4), 127.0.0.6 and 127.0.0.7
    wl.example   allow-lists 127.0.0.7
"""
import re
import time
import urllib.request

import pytest

from dnsserver import DnsServer, unbound_available
from mxtest import Client, free_port, make_message, message_id, transact

pytestmark = pytest.mark.skipif(not unbound_available(), reason="unbound is not installed (make deps)")

V6_NIBBLES = ".".join("1" + "0" * 31)  # ::1, lowest nibble first

ZONE = {
    "5.0.0.127.bl.example": [("A", "127.0.0.2"), ("TXT", "listed")],
    "6.0.0.127.bl.example": [("A", "127.0.0.11")],
    V6_NIBBLES + ".bl.example": [("A", "127.0.0.2")],
    "5.0.0.127.zen.example": [("A", "127.0.0.4")],
    "6.0.0.127.zen.example": [("A", "127.0.0.3")],
    "7.0.0.127.zen.example": [("A", "127.0.0.2")],
    "7.0.0.127.wl.example": [("A", "127.0.0.2")],
    "bl.example": [("A", "192.0.2.1")],  # the zones exist (an unlisted client is NXDOMAIN)
    "zen.example": [("A", "192.0.2.1")],
    "wl.example": [("A", "192.0.2.1")],
    "8.0.0.127.short.example": [("A", "127.0.0.2", 1)],  # a TTL of one second
    "short.example": [("A", "192.0.2.1")],
}

RCPT = "user@example.com"


@pytest.fixture
def dns(tmp_path):
    with DnsServer(tmp_path, ZONE, servfail=["broken.example"]) as d:
        yield d


def dnsbl_gw(gateway, sink, dns, **opts):
    o = dict(downstream=sink.addr, filters="limits, relay, recipients, dnsbl", dns_server=dns.addr,
             dnsbl_sites="bl.example", dnsbl_timeout=3)
    o.update(opts)
    return gateway(**o)


def session(port, source, rcpts, host="127.0.0.1"):
    """Greeting, EHLO, one transaction from a source address: the replies."""
    with Client(port, source=source, host=host) as c:
        g = c.greet()
        if g.code != 220:
            return g, None
        c.cmd("EHLO client.test")
        msg = make_message()
        res = transact(c, "sender@src.test", list(rcpts), msg)
        return g, (res, message_id(msg))


def test_listed_client_refused_at_rcpt_postmaster_still_reaches(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns)
    g, (res, mid) = session(gw.port, "127.0.0.5", [RCPT, "postmaster@example.com"])
    assert g.code == 220
    assert res.rcpt[0].code == 554 and res.rcpt[0].esc == "5.7.1", res.rcpt
    assert "Service unavailable; client [127.0.0.5] blocked using bl.example" in res.rcpt[0].text
    assert res.rcpt[1].code == 250 and res.final.code == 250, res
    m = sink.wait_message(mid)
    assert m is not None and m.rcpts == ["postmaster@example.com"]
    # an unlisted client in the same run
    _, (res, mid) = session(gw.port, "127.0.0.1", [RCPT])
    assert res.final.code == 250
    rec = gw.wait_record(lambda r: r.get("event") == "dnsbl" and r.get("client") == "127.0.0.5", timeout=2)
    assert rec and rec["score"] == "1" and rec["lists"] == "bl.example" and rec["listed"] == "yes", rec
    tx = gw.wait_record(lambda r: r.get("event") == "tx" and r.get("client") == "127.0.0.5", timeout=2)
    assert tx and tx["dnsbl"] == "1", tx


def test_scores_filters_threshold_and_allow_lists(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns, dnsbl_sites="zen.example*2, bl.example=127.0.0.[2..3]*1, wl.example*-2",
                  dnsbl_threshold=3)
    # .5: zen 2 + bl 1 (127.0.0.2 matches) = 3: refused, naming the heaviest list
    _, (res, _) = session(gw.port, "127.0.0.5", [RCPT])
    assert res.rcpt[0].code == 554 and "blocked using zen.example" in res.rcpt[0].text, res.rcpt
    # .6: zen 2; bl answers 127.0.0.11, outside the filter: 2 < 3
    _, (res, _) = session(gw.port, "127.0.0.6", [RCPT])
    assert res.final.code == 250, res
    # .7: zen 2, allow-listed -2: 0
    _, (res, _) = session(gw.port, "127.0.0.7", [RCPT])
    assert res.final.code == 250, res
    scores = {r["client"]: r["score"] for r in gw.log_records() if r.get("event") == "dnsbl"}
    assert scores.get("127.0.0.5") == "3" and scores.get("127.0.0.6") == "2", scores
    assert scores.get("127.0.0.7", "0") == "0", scores


def test_refused_before_the_greeting(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns, dnsbl_stage="greeting")
    with Client(gw.port, source="127.0.0.5") as c:
        g = c.greet()
        assert g.code == 554 and g.esc == "5.7.1", g
        assert "client [127.0.0.5] blocked using bl.example" in g.text
        c.wait_closed(5)
    g, (res, _) = session(gw.port, "127.0.0.1", [RCPT])
    assert g.code == 220 and res.final.code == 250


def test_a_list_that_never_answers_costs_at_most_dnsbl_timeout(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns, dnsbl_stage="greeting", dnsbl_timeout=1,
                  http_listen="127.0.0.1:%d" % free_port())
    dns.pause()
    try:
        t0 = time.monotonic()
        g, (res, _) = session(gw.port, "127.0.0.5", [RCPT])
        took = time.monotonic() - t0
    finally:
        dns.resume()
    assert g.code == 220 and res.final.code == 250, (g, res)
    assert 0.8 < took < 4, took
    text = urllib.request.urlopen("http://%s/metrics" % gw.opts["http_listen"], timeout=5).read().decode()
    assert re.search(r'^mxgate_dnsbl_lookups_total\{result="timeout"\} 1$', text, re.M), text


def test_answers_are_cached_no_query_on_repeat(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns, workers=1, dnsbl_sites="bl.example, zen.example")
    before = dns.query_count()
    session(gw.port, "127.0.0.5", [RCPT])
    first = dns.query_count()
    assert first - before >= 2, (before, first)
    for _ in range(3):
        _, (res, _) = session(gw.port, "127.0.0.5", [RCPT])
        assert res.rcpt[0].code == 554
    assert dns.query_count() == first, "a repeat client was asked about again"


def test_the_workers_cache_keeps_an_answer_for_its_ttl(sink, dns, gateway):
    # The worker answers a repeat client from its own cache (no trip through
    # libunbound), and asks again once the answer's TTL has run out.
    http = "127.0.0.1:%d" % free_port()
    gw = dnsbl_gw(gateway, sink, dns, workers=1, dnsbl_sites="short.example", http_listen=http, pass_cache_ttl=0)

    def hits():
        text = urllib.request.urlopen("http://%s/metrics" % http, timeout=5).read().decode()
        return int(re.search(r"^mxgate_dnsbl_cache_hits_total (\d+)$", text, re.M).group(1))

    before = dns.query_count()
    _, (res, _) = session(gw.port, "127.0.0.8", [RCPT])
    assert res.rcpt[0].code == 554
    asked = dns.query_count()
    assert asked == before + 1 and hits() == 0, (before, asked)
    _, (res, _) = session(gw.port, "127.0.0.8", [RCPT])        # within the TTL
    assert res.rcpt[0].code == 554 and hits() == 1
    assert dns.query_count() == asked
    # the TTL has run out: ours at once (milliseconds), libunbound's within
    # two seconds (it counts whole seconds, so a TTL of 1 lives up to 2 s)
    time.sleep(2.2)
    _, (res, _) = session(gw.port, "127.0.0.8", [RCPT])
    assert res.rcpt[0].code == 554 and hits() == 1
    assert dns.query_count() == asked + 1, "an expired answer was not asked again"


def test_tag_instead_of_refusing(sink, dns, gateway):
    gw = dnsbl_gw(gateway, sink, dns, dnsbl_action="tag", dnsbl_sites="bl.example, zen.example*2")
    _, (res, mid) = session(gw.port, "127.0.0.5", [RCPT])
    assert res.final.code == 250, res
    m = sink.wait_message(mid)
    assert b"X-Mxgate-DNSBL: score=3 lists=bl.example,zen.example\r\n" in m.wire, m.wire[:400]
    _, (res, mid) = session(gw.port, "127.0.0.1", [RCPT])
    assert b"X-Mxgate-DNSBL" not in sink.wait_message(mid).wire


def test_ipv6_client(sink, dns, gateway):
    p4, p6 = free_port(), free_port()
    gw = dnsbl_gw(gateway, sink, dns, listen="[::1]:%d,127.0.0.1:%d" % (p6, p4))
    try:
        _, (res, _) = session(p6, None, [RCPT], host="::1")
    except OSError as e:
        pytest.skip("no IPv6 loopback here: %s" % e)
    assert res.rcpt[0].code == 554 and "client [::1] blocked using bl.example" in res.rcpt[0].text, res.rcpt


def test_a_bad_site_list_stops_start_up(sink, dns, gateway):
    with pytest.raises(BaseException) as e:
        dnsbl_gw(gateway, sink, dns, dnsbl_sites="bl.example=127.0.0.[9..2]", ready_timeout=3)
    assert "dnsbl_sites" in str(e.value)


def lookups(http):
    text = urllib.request.urlopen("http://%s/metrics" % http, timeout=5).read().decode()
    return {k: int(v) for k, v in re.findall(r'^mxgate_dnsbl_lookups_total\{result="(\w+)"\} (\d+)$', text, re.M)}


def quit_session(port, source):
    with Client(port, source=source) as c:
        assert c.greet().code == 220
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<sender@src.test>")
        c.cmd("RCPT TO:<%s>" % RCPT)  # waits for the lookups (postmaster would not)
        c.cmd("RSET")
        r = c.cmd("QUIT")
        c.wait_closed(5)
        return r


@pytest.mark.parametrize("ttl", [3600, 0])
def test_pass_cache(sink, dns, gateway, ttl):
    """A client that passed (every list answered, under the threshold, and
    it said QUIT) skips the lookups on its next connections, on any worker;
    a listed client never passes."""
    http = "127.0.0.1:%d" % free_port()
    gw = dnsbl_gw(gateway, sink, dns, http_listen=http, pass_cache_ttl=ttl)
    quit_session(gw.port, "127.0.0.1")
    quit_session(gw.port, "127.0.0.5")  # listed: no pass
    first = lookups(http)
    assert first.get("clean") == 1 and first.get("listed") == 1, first
    for _ in range(4):
        quit_session(gw.port, "127.0.0.1")
        quit_session(gw.port, "127.0.0.5")
    after = lookups(http)
    if ttl:
        assert after.get("pass_cache") == 4 and after.get("clean") == 1, after
    else:
        assert after.get("pass_cache", 0) == 0 and after.get("clean") == 5, after
    assert after.get("listed") == 5, after


def test_a_list_that_fails_does_not_count_nor_hold(sink, dns, gateway):
    """A list answering SERVFAIL: it does not count (no block on an error),
    the others still do, nothing waits for dnsbl_timeout, and the error is
    counted."""
    http = "127.0.0.1:%d" % free_port()
    gw = dnsbl_gw(gateway, sink, dns, dnsbl_sites="broken.example*5, bl.example", dnsbl_timeout=10,
                  http_listen=http)
    t0 = time.monotonic()
    _, (res, _) = session(gw.port, "127.0.0.1", [RCPT])
    assert res.final.code == 250 and time.monotonic() - t0 < 5, res
    _, (res, _) = session(gw.port, "127.0.0.5", [RCPT])
    assert res.rcpt[0].code == 554 and "blocked using bl.example" in res.rcpt[0].text, res.rcpt
    text = urllib.request.urlopen("http://%s/metrics" % http, timeout=5).read().decode()
    assert int(re.search(r"^mxgate_dnsbl_errors_total (\d+)$", text, re.M).group(1)) >= 2, text
