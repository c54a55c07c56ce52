#!/bin/sh
# make test: unit tests (ASan+UBSan), integration tests against real peers,
# then a short fuzz pass. Ends with the line the CI runner reads.
set -u
pass=0; fail=0
add() { pass=$((pass + $1)); fail=$((fail + $2)); }

if make --no-print-directory unit; then :; fi
if [ -f build/unit.counts ]; then read p f < build/unit.counts; add "$p" "$f"; else add 0 1; fi

# Debian's python3 has python3-pytest; a python3 earlier on PATH may not.
PY=python3
$PY -c 'import pytest' 2>/dev/null || PY=/usr/bin/python3

# Integration tests drive the ASan+UBSan build of the server: a memory error
# in the gateway fails them even when the SMTP dialogue looks right.
if ls tests/integration/test_*.py >/dev/null 2>&1 && make --no-print-directory build/asan/mxgate >/dev/null; then
    if MXGATE_BIN="$(pwd)/build/asan/mxgate" $PY -m pytest -q -p no:cacheprovider tests/integration > build/integration.log 2>&1; then rc=0; else rc=$?; fi
    tail -30 build/integration.log
    p=$(grep -Eo '[0-9]+ passed' build/integration.log | tail -1 | grep -Eo '[0-9]+'); p=${p:-0}
    f=$(grep -Eo '[0-9]+ (failed|error)' build/integration.log | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    add "$p" "$f"
fi

if make --no-print-directory fuzz-test; then add 1 0; else add 0 1; fi

echo "mxgate: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
