"""
The RFC 7208 conformance suite through the SPF helper (`mxgate --spf-helper`)
over real DNS (tests/spf/run_rfc7208.py does the work). The number of tests
passed may not fall below tests/spf/rfc7208.baseline; when it rises, the test
says so, and the baseline should be raised with the change that did it.
Independently of the count, every helper must exit 0 when its socket closes,
with no sanitizer report in its output.

MXGATE_BIN names the binary (the harness points it at the ASan build);
MXGATE_SPF_SUITE overrides where the suite file is.
"""
import io
import os
import sys
import warnings

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "spf"))

import run_rfc7208  # noqa: E402
from dnsserver import unbound_available  # noqa: E402

BASELINE = os.path.join(ROOT, "tests", "spf", "rfc7208.baseline")
BINARY = os.environ.get("MXGATE_BIN") or os.path.join(ROOT, "build", "mxgate")


def test_rfc7208_suite(tmp_path):
    if not unbound_available():
        pytest.skip("unbound is not installed (make deps): the RFC 7208 suite needs a DNS server")
    suite = run_rfc7208.default_suite()
    assert os.path.exists(suite), "RFC 7208 suite not found at %s (set MXGATE_SPF_SUITE)" % suite
    with open(BASELINE) as f:
        baseline = int(f.read().strip())
    out = io.StringIO()
    report = run_rfc7208.run(BINARY, suite, workdir=str(tmp_path), out=out)
    text = out.getvalue() + report.summary()
    print(text)
    assert report.total == sum(len(s.get("tests") or {}) for s in run_rfc7208.load_suite(suite))
    assert not report.helper_problems, (
        "the SPF helper crashed, did not exit 0 at EOF, or reported a memory error:\n%s" % text)
    assert report.passed >= baseline, (
        "RFC 7208 suite: %d passed, below the baseline of %d (%s)\n%s"
        % (report.passed, baseline, os.path.relpath(BASELINE, ROOT), text))
    if report.passed > baseline:
        warnings.warn("RFC 7208 suite: %d passed, above the baseline of %d: raise %s"
                      % (report.passed, baseline, os.path.relpath(BASELINE, ROOT)))
