#!/bin/sh
# make test: unit tests (ASan+UBSan), integration tests against real peers
# (the ASan build of the server), a short pass of every fuzz target and of
# the wire fuzzer. Ends with the line the CI runner reads.
#
# Nothing may report green wrongly: counts from an earlier run are removed
# first, a test binary or the ASan server that does not build is a failure,
# a suite that leaves no counts is a failure, and what was skipped is said.
set -u
pass=0; fail=0; skip=0
add() { pass=$((pass + $1)); fail=$((fail + $2)); }
mkdir -p build
rm -f build/unit.counts build/fuzz.counts build/integration.log build/wirefuzz.log build/wirefuzz-content.log

# Unit tests: make builds what it can (-k); a binary that did not build is
# counted as failed by run-unit.sh.
make --no-print-directory unit || true
if [ -f build/unit.counts ]; then
    read p f k < build/unit.counts; add "$p" "$f"; skip=$((skip + ${k:-0}))
else
    echo "unit: no counts (the suite did not run)"; add 0 1
fi

# Debian's python3 has python3-pytest; a python3 earlier on PATH may not.
PY=python3
$PY -c 'import pytest' 2>/dev/null || PY=/usr/bin/python3

# Integration tests drive the ASan+UBSan build of the server: a memory error
# in the gateway fails them even when the SMTP dialogue looks right.
if make --no-print-directory build/asan/mxgate > build/asan-build.log 2>&1; then
    if MXGATE_BIN="$(pwd)/build/asan/mxgate" $PY -m pytest -q -p no:cacheprovider -rs tests/integration \
        > build/integration.log 2>&1; then rc=0; else rc=$?; fi
    tail -30 build/integration.log
    # pytest's summary is its last line ("1 failed, 144 passed in 130.95s");
    # counts elsewhere in the log (a test's captured output) are not counts.
    sum=$(tail -1 build/integration.log)
    p=$(echo "$sum" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+'); p=${p:-0}
    f=$(echo "$sum" | grep -Eo '[0-9]+ (failed|errors?)' | awk '{s+=$1} END {print s+0}')
    k=$(echo "$sum" | grep -Eo '[0-9]+ skipped' | grep -Eo '[0-9]+'); k=${k:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then echo "integration: nothing ran"; f=1; fi
    add "$p" "$f"; skip=$((skip + k))
else
    tail -30 build/asan-build.log
    echo "integration: the ASan server did not build (build/asan-build.log)"
    add 0 1
fi

# Every libFuzzer target, each its own test.
make --no-print-directory fuzz-test || true
if [ -f build/fuzz.counts ]; then
    read p f < build/fuzz.counts; add "$p" "$f"
else
    echo "fuzz: no counts (the pass did not run)"; add 0 1
fi

# The wire fuzzer: mutated SMTP over TCP against the ASan server, relaying
# through (20 s), then with every message held and scanned (content_scanner
# against a fake rspamd that passes it, 10 s).
wire() { # name seconds [args...]
    local name=$1 secs=$2
    shift 2
    if [ -x build/asan/mxgate ] && $PY tests/fuzz/wirefuzz.py --seconds "$secs" "$@" > "build/$name.log" 2>&1; then
        echo "$name: $(tail -1 "build/$name.log")"; add 1 0
    else
        tail -30 "build/$name.log" 2>/dev/null; echo "$name: FAILED (build/$name.log)"; add 0 1
    fi
}
wire wirefuzz "${WIRE_TEST_TIME:-20}"
wire wirefuzz-content "${WIRE_CONTENT_TIME:-10}" --content --out build/wirefuzz-content

[ "$skip" -eq 0 ] || echo "mxgate: $skip skipped (see the lines above)"
echo "mxgate: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
