#!/bin/sh
# A short pass of every libFuzzer target: each target is one test (it did
# not build, or it found a crash: failed). Counts go to build/fuzz.counts
# ("passed failed"). Usage: run-fuzz.sh SECONDS TARGET...
secs=$1; shift
pass=0; fail=0
rm -f build/fuzz.counts
for f in "$@"; do
    n=$(basename "$f")
    if [ ! -x "$f" ]; then
        echo "fuzz $n: did not build"
        fail=$((fail + 1))
        continue
    fi
    mkdir -p "build/fuzz/work-$n"
    if "$f" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix=build/fuzz/ \
        "build/fuzz/work-$n" "tests/fuzz/corpus/$n" > "build/fuzz/$n.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "build/fuzz/$n.log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "build/fuzz/$n.log")
        echo "fuzz $n: passed ($runs runs, $rate/s)"
        pass=$((pass + 1))
    else
        tail -50 "build/fuzz/$n.log"
        echo "fuzz $n: FAILED (build/fuzz/$n.log)"
        fail=$((fail + 1))
    fi
done
echo "$pass $fail" > build/fuzz.counts
[ "$fail" -eq 0 ]
