"""
The downstream pool's limits, each crossed over the wire: the connection
cap per worker, retirement after downstream_max_messages, the bounded wait
for a connection (451 4.4.5), and the greeting delay that catches clients
talking first.
"""
import socket
import threading
import time

from mxtest import HOST, Client, new_msgid, make_message, send_mail


def _parallel(port, n, timeout=30):
    results = [None] * n

    def one(i):
        results[i] = send_mail(port, msg=make_message(new_msgid("pool")), timeout=timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


def test_pool_never_exceeds_downstream_connections(sink, gateway):
    sink.data_delay = 0.2  # transactions overlap at the downstream
    gw = gateway(downstream=sink.addr, workers=1, downstream_connections=2, downstream_queue_timeout=30)
    results = _parallel(gw.port, 12)
    assert all(r is not None and r.delivered for r in results), [r for r in results if not (r and r.delivered)][:3]
    assert sink.max_open <= 2, "the downstream saw %d connections at once" % sink.max_open
    assert sink.max_open == 2  # and the pool did use both


def test_pool_retires_connection_after_max_messages(sink, gateway):
    gw = gateway(downstream=sink.addr, workers=1, downstream_connections=1, downstream_max_messages=3)
    for _ in range(10):
        assert send_mail(gw.port).delivered
    # 10 messages, 3 per connection: 4 connections, each retired when used up
    assert sink.wait_for(lambda s: len(s.messages) == 10, timeout=5)
    assert sink.connections == 4, sink.connections


def test_pool_wait_for_connection_times_out_451(sink, gateway):
    sink.data_delay = 3.0  # the only connection is busy for 3 s
    gw = gateway(downstream=sink.addr, workers=1, downstream_connections=1, downstream_queue_timeout=1,
                 downstream_timeout=10)
    first = []
    t = threading.Thread(target=lambda: first.append(send_mail(gw.port, timeout=20)))
    t.start()
    time.sleep(0.5)  # the first transaction holds the connection
    with Client(gw.port) as c:
        assert c.greet().code == 220
        assert c.cmd("EHLO client.test").code == 250
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<sender@src.test>", timeout=10)
        waited = time.monotonic() - t0
    assert r.code == 451 and r.esc == "4.4.5", r
    assert 0.7 <= waited <= 2.5, waited
    t.join(20)
    assert first and first[0].delivered, first


def test_greeting_delay_refuses_client_that_talks_first(gateway):
    gw = gateway(greeting_delay=600)
    s = socket.create_connection((HOST, gw.port), timeout=5)
    s.sendall(b"EHLO eager.test\r\n")
    data = b""
    while True:  # the 554 and then the close
        d = s.recv(4096)
        if not d:
            break
        data += d
    s.close()
    assert data.startswith(b"554 5.5.0"), data
    assert b"220" not in data
    # a client that waits hears 220 after the delay
    t0 = time.monotonic()
    with Client(gw.port) as c:
        g = c.greet()
        waited = time.monotonic() - t0
        assert g.code == 220
    assert waited >= 0.5, waited
