#!/bin/sh
# run-micro.sh - runs the core micro-benchmarks (make bench), keeps the JSON
# next to the binary (micro.json) and ends with two summary lines for scripts:
#   scan_vs_memchr_ratio: R     scanner bytes/s over memchr bytes/s
#   parse_ns_per_command: N     nanoseconds per pipelined command
# Usage: sh bench/run-micro.sh build/bench/bench_core [extra benchmark flags]
set -eu
bin=${1:?usage: run-micro.sh BENCH_BINARY [flags]}
shift
json="$(dirname "$bin")/micro.json"
rm -f "$json"

"$bin" --benchmark_min_time=0.5 --benchmark_out="$json" --benchmark_out_format=json "$@"

python3 - "$json" <<'EOF'
import json, sys

with open(sys.argv[1]) as f:
    runs = {b["name"]: b for b in json.load(f)["benchmarks"] if b.get("run_type", "iteration") == "iteration"}

def get(name, field):
    b = runs.get(name)
    if b is None or b.get("error_occurred"):
        sys.exit("run-micro: %s did not run: %s" % (name, b and b.get("error_message")))
    if field not in b:
        sys.exit("run-micro: %s has no %s" % (name, field))
    return float(b[field])

scan = get("BM_ScanBody", "bytes_per_second")
mchr = get("BM_Memchr", "bytes_per_second")
mcpy = get("BM_Memcpy", "bytes_per_second")
ns = get("BM_ParsePipelinedGroup", "ns_per_command")

print()
for label, v in (("scan", scan), ("memchr", mchr), ("memcpy", mcpy)):
    print("%-7s %8.2f GB/s  (%.0f bytes/s)" % (label + ":", v / 1e9, v))
print("scan_vs_memchr_ratio: %.2f" % (scan / mchr))
print("parse_ns_per_command: %.1f" % ns)
EOF
