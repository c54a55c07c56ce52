#!/bin/sh
# Runs each unit-test binary and sums cmocka's counts into build/unit.counts
# ("passed failed skipped"). A binary that is missing (it did not build) or
# dies without printing its counts (a sanitizer report, a crash) counts as
# failed; "[  SKIPPED ] N test(s)" lines (a SIMD layer this CPU lacks) are
# counted as skipped, so a green run says what it did not test.
pass=0; fail=0; skip=0
rm -f build/unit.counts
for t in "$@"; do
    if [ ! -x "$t" ]; then
        echo "unit $(basename "$t"): did not build"
        fail=$((fail + 1))
        continue
    fi
    out=$("$t" 2>&1); rc=$?
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    k=$(printf '%s\n' "$out" | sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then printf '%s\n' "$out" | tail -40; fi
    printf '%s\n' "$out" | grep '^\[  SKIPPED \].*lacks' | sed "s/^/unit $(basename "$t"): /"
    echo "unit $(basename "$t"): $p passed, $f failed, $k skipped"
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + k))
done
echo "$pass $fail $skip" > build/unit.counts
[ "$fail" -eq 0 ]
