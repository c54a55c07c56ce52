"""
Fixtures for the integration tests: the real build/mxgate against real peers
(a recording SMTP sink in Python, swaks, raw sockets).

  sink        a running SmtpSink on a free 127.0.0.1 port, stopped afterwards
  make_sink   factory for more sinks (LMTP, a fixed port, ...)
  gateway     factory: gateway(downstream=sink.addr, workers=1, ...) starts
              build/mxgate with those options as --flags, waits until its port
              greets (10 s), and at teardown sends SIGTERM and asserts exit
              code 0 within drain_timeout + 5 s.

MXGATE_BIN overrides the binary. A gateway that cannot start because the
kernel or a sandbox refuses io_uring skips the test loudly (the reason is in
the summary); any other start failure fails it.
"""
import os
import re
import resource
import time

import pytest

from mxtest import HOST, Gateway, SmtpSink, StartError, free_port


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


_raise_nofile()  # 500 parallel sessions need ~1100 descriptors here and in mxgate

DEFAULTS = {
    "workers": 2,
    "hostname": "mx.test",
    "relay_domains": "example.com,example.net",
    "drain_timeout": 5,
    "command_timeout": 30,
    "data_timeout": 30,
    "downstream_timeout": 10,
    "log_level": "info",
    "http_listen": "",  # tests that want the endpoint give it a free port
    # The tests run as root in 0700 temporary directories: keep root (mxgate
    # warns). test_operator.py drops to the default user on purpose.
    "user": "root",
}

_NO_URING = re.compile(r"io_uring|IORING|seccomp", re.I)

# A broken gateway (one that never drains, say) costs each test its full
# timeouts; past this budget the remaining tests fail at once instead, so the
# suite stays bounded. A healthy run takes well under a minute.
BUDGET_S = float(os.environ.get("MXGATE_IT_BUDGET", "400"))
_T0 = time.monotonic()


@pytest.fixture(autouse=True)
def _suite_budget():
    spent = time.monotonic() - _T0
    if spent > BUDGET_S:
        pytest.fail("integration suite over its %.0f s budget (%.0f s spent); not run" % (BUDGET_S, spent),
                    pytrace=False)


@pytest.fixture
def make_sink():
    sinks = []

    def make(**kw):
        s = SmtpSink(**kw).start()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


@pytest.fixture
def sink(make_sink):
    return make_sink()


@pytest.fixture
def gateway(tmp_path, request):
    started = []
    request.node._mxgates = started

    def start(cwd=None, env=None, ready_timeout=10.0, **opts):
        o = dict(DEFAULTS)
        o["listen"] = "%s:%d" % (HOST, free_port())
        o["maildir"] = str(tmp_path / "mail")
        o.update(opts)
        g = Gateway(o, log_path=str(tmp_path / ("mxgate-%d.log" % len(started))), cwd=cwd,
                    env=env)
        started.append(g)
        try:
            g.start(ready_timeout)
        except StartError as e:
            g.start_failed = True   # reported here; teardown does not report it again
            msg = str(e)
            if g.proc is not None and g.proc.returncode not in (None, 0) and _NO_URING.search(msg):
                pytest.skip("mxgate cannot use io_uring on this machine: %s" % msg[-500:])
            pytest.fail(msg, pytrace=False)
        return g

    yield start

    bad = []
    for g in started:
        if g.proc is None or getattr(g, "start_failed", False):
            g.kill()
            continue
        was_running = g.proc.poll() is None
        rc = g.stop()
        if rc != 0:
            bad.append("mxgate on port %d: exit code %r after SIGTERM (%s; drain_timeout %s)\n%s"
                       % (g.port, rc, "was running" if was_running else "had exited already",
                          g.drain_timeout, g.log_tail(30)))
    assert not bad, "\n".join(bad)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for g in getattr(item, "_mxgates", []):
            rep.sections.append(("mxgate :%d stderr (tail)" % g.port, g.log_tail(60)))
