#!/usr/bin/python3
"""
run_rfc7208 - the openspf.org RFC 7208 conformance suite through the SPF
helper (`mxgate --spf-helper`), over real DNS.

For each scenario of the suite (one YAML document): its zone data is loaded
into a DnsServer (unbound on 127.0.0.1), a helper is started against that
server, every test of the scenario is sent at once (pipelined), each reply's
result is compared with the expected one (and the explanation, when the test
gives one), then both are stopped. Prints one line per failing test and the
summary line `rfc7208: P passed, F failed, of T`; exits 0 whatever the count
(tests/integration/test_rfc7208.py holds the count against a baseline).

How the zone data is served, as the suite's own driver (pyspf's) does:
  - A type SPF record is also served as TXT, unless the name has TXT data of
    its own ("TXT: NONE" means: none, and no copy either). RFC 7208 checkers
    read TXT only, so this is how SPF-type data reaches them.
  - TIMEOUT: the name answers SERVFAIL (at once) for every type it has no
    data of; its listed records are still answered. The helper sees a DNS
    error, as it would after its own timeout, without the wait.
  - explanation DEFAULT means "the checker's default explanation", which the
    suite leaves to the implementation: not compared.

    /usr/bin/python3 tests/spf/run_rfc7208.py [--binary build/mxgate]
        [--suite PATH] [-k SUBSTRING] [-v]

The suite is tests/spf/suite/rfc7208-tests.yml (the openspf.org suite,
release 2014.04, BSD-licensed: its LICENSE and CHANGES are beside it)
unless MXGATE_SPF_SUITE or --suite names another file.
"""
import argparse
import os
import re
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from dnsserver import DnsServer, unbound_available  # noqa: E402
from spfclient import HelperError, SpfHelper  # noqa: E402

DEFAULT_BINARY = os.path.join(ROOT, "build", "mxgate")


def default_suite():
    return os.environ.get("MXGATE_SPF_SUITE") or os.path.join(ROOT, "tests", "spf", "suite", "rfc7208-tests.yml")


def load_suite(path):
    """The scenarios: a list of {description, tests, zonedata}."""
    with open(path, "rb") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def zone_records(zonedata):
    """(records, servfail) for DnsServer from one scenario's zonedata."""
    records, servfail = {}, []
    for name, entries in (zonedata or {}).items():
        name = name.lower()
        recs, spf, has_txt = [], [], False
        for e in entries or ():
            if e == "TIMEOUT":
                servfail.append(name)
                continue
            if not isinstance(e, dict):
                raise ValueError("zonedata %s: unknown entry %r" % (name, e))
            for rtype, value in e.items():
                rtype = rtype.upper()
                if rtype == "TXT":
                    has_txt = True
                if value == "NONE":
                    continue
                if rtype == "SPF":
                    spf.append(value)
                if rtype == "MX":
                    value = (int(value[0]), value[1])
                recs.append((rtype, value))
        if not has_txt:
            recs += [("TXT", v) for v in spf]
        records[name] = recs
    return records, servfail


def expected_results(test):
    r = test["result"]
    return [r] if isinstance(r, str) else list(r)


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []   # (scenario, test, expected, got, spec, detail)
        self.helper_problems = []   # (scenario, exit code, log excerpt)
        self.seconds = 0.0

    @property
    def total(self):
        return self.passed + self.failed

    def summary(self):
        return "rfc7208: %d passed, %d failed, of %d" % (self.passed, self.failed, self.total)


def _judge(test, got):
    """None if the reply satisfies the test, else what differs."""
    res, received, comment, ttl = got
    want = expected_results(test)
    if res not in want:
        return "expected %s got %s" % ("|".join(want), res)
    exp = test.get("explanation")
    if exp is not None and exp != "DEFAULT" and res == "fail" and comment != exp:
        return "expected explanation %r got %r" % (exp, comment)
    return None


_SANITIZER = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|"
                        r"Sanitizer:DEADLYSIGNAL")


def _helper_health(title, helper, report, out):
    """A helper that did not exit 0 on EOF, or whose output has a sanitizer
    report, is a problem of its own, whatever the results were."""
    log = helper.log_text()
    m = _SANITIZER.search(log)
    rc = helper.returncode
    if rc == 0 and not m:
        return
    excerpt = log[max(0, m.start() - 200):m.start() + 2000] if m else log[-1500:]
    report.helper_problems.append((title, rc, excerpt))
    print("HELPER %s: exit code %r%s\n%s" % (title, rc, ", sanitizer report" if m else "",
                                              excerpt), file=out)


def run_scenario(scn, binary, workdir, report, only=None, verbose=False, out=sys.stdout,
                 threads=4, dns_timeout=1, timeout=20.0):
    title = scn.get("description", "?")
    tests = [(n, t) for n, t in (scn.get("tests") or {}).items()
             if not only or only in "%s/%s" % (title, n)]
    if not tests:
        return
    records, servfail = zone_records(scn.get("zonedata"))
    os.makedirs(workdir, exist_ok=True)
    dns = DnsServer(workdir, records, servfail=servfail)
    helper = SpfHelper(binary, dns, threads=threads,
                       extra_args=["--dns-timeout", str(dns_timeout)],
                       log_path=os.path.join(workdir, "helper.log"))
    items = [(t["host"], t.get("helo") or "", t.get("mailfrom") or "") for _, t in tests]
    try:
        dns.start()
        helper.start()
        try:
            replies = helper.check_many(items, timeout=timeout)
            error = None
        except (HelperError, TimeoutError, OSError) as e:
            replies, error = [None] * len(tests), "%s: %s" % (type(e).__name__, e)
    finally:
        helper.stop()
        dns.stop()
    _helper_health(title, helper, report, out)
    if error and verbose:
        print("scenario %r: %s" % (title, error), file=out)
    for (name, test), got in zip(tests, replies):
        why = _judge(test, got) if got else "expected %s got no reply (%s)" % (
            "|".join(expected_results(test)), (error or "").splitlines()[0][:200])
        if why is None:
            report.passed += 1
            if verbose:
                print("ok   %s/%s: %s" % (title, name, got[0]), file=out)
        else:
            report.failed += 1
            report.failures.append((title, name, test["result"], got and got[0],
                                    test.get("spec"), why))
            print("FAIL %s/%s: %s (spec %s)" % (title, name, why, test.get("spec")), file=out)
        if verbose and got:
            print("       received=%r comment=%r ttl=%d" % (got[1], got[2], got[3]), file=out)


def skip_scenario(scn, report, only, out, why):
    title = scn.get("description", "?")
    for name, test in (scn.get("tests") or {}).items():
        if only and only not in "%s/%s" % (title, name):
            continue
        report.failed += 1
        report.failures.append((title, name, test["result"], None, test.get("spec"), why))
        print("FAIL %s/%s: not run: %s (spec %s)" % (title, name, why, test.get("spec")),
              file=out)


def run(binary=DEFAULT_BINARY, suite=None, only=None, verbose=False, workdir=None,
        out=sys.stdout, threads=4, dns_timeout=1, budget_s=100.0):
    """Runs the suite; returns a Report. Raises RuntimeError if unbound is
    missing, FileNotFoundError if the suite or the binary is. A scenario
    waits at most 20 s for its replies; once budget_s is spent, the scenarios
    left are counted as failed without being run (a hung helper must not
    hold a test run for minutes)."""
    if not unbound_available():
        raise RuntimeError("unbound is not installed")
    suite = suite or default_suite()
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError("no executable %s (make build/mxgate)" % binary)
    scenarios = load_suite(suite)
    report = Report()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rfc7208-") as tmp:
        base = workdir or tmp
        for i, scn in enumerate(scenarios):
            left = budget_s - (time.monotonic() - t0)
            if left < 1:
                skip_scenario(scn, report, only, out, "suite over its %.0f s budget" % budget_s)
                continue
            run_scenario(scn, binary, os.path.join(base, "s%02d" % i), report, only=only,
                         verbose=verbose, out=out, threads=threads, dns_timeout=dns_timeout,
                         timeout=min(20.0, left))
    report.seconds = time.monotonic() - t0
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("MXGATE_BIN") or DEFAULT_BINARY)
    ap.add_argument("--suite", default=None, help="default: $MXGATE_SPF_SUITE or %s"
                    % os.path.relpath(default_suite(), ROOT))
    ap.add_argument("-k", dest="only", default=None, help="only tests whose "
                    "'scenario/test' contains this")
    ap.add_argument("-v", dest="verbose", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep the DNS and helper files here")
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args(argv)
    report = run(a.binary, a.suite, a.only, a.verbose, a.workdir, threads=a.threads)
    print(report.summary())
    if a.verbose:
        print("(%.1f s)" % report.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
