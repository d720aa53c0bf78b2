#!/usr/bin/env bash
# Where the writer thread's time goes during `entsync bench`'s group-commit run, kernel
# included (callgrind counts user-space instructions only).
#
#   scripts/writer_profile.sh [ENTSYNC_BINARY] [LINES]
#
# Samples every thread at 999 Hz with perf's software clock (no hardware counters
# needed), finds the last `entsync-writer` thread the bench started (the group-commit
# run's engine), and prints, for that run's time window, the samples of each thread
# and the writer thread's symbols with their callees included.
set -euo pipefail
bin=${1:-target/release/entsync}
lines=${2:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
perf record -q -e cpu-clock -F 999 -g -o "$work/perf.data" \
    "$bin" bench --grants 1000 --lookups 1000 --ingest 20000 --writers 64 --dir "$work" \
    > "$work/bench.json" 2> /dev/null
read -r start end < <(perf script -i "$work/perf.data" -F comm,tid,time 2> /dev/null |
    awk '$1 == "entsync-writer" { t = $3; sub(":", "", t)
             if (!($2 in first)) { first[$2] = t; order[++n] = $2 }; last[$2] = t }
         END { w = order[n]; print first[w], last[w] }')
echo "group-commit writer window: $start .. $end s"
perf script -i "$work/perf.data" -F comm,time 2> /dev/null |
    awk -v s="$start" -v e="$end" '{ t = $2; sub(":", "", t); if (t >= s && t <= e) n[$1]++ }
         END { for (c in n) printf "  %-18s %6d samples\n", c, n[c] }'
perf report -i "$work/perf.data" --time "$start,$end" --comm entsync-writer --children \
    --sort sym --stdio -g none 2> /dev/null | grep '%' | head -n "$lines"
grep -o '"ingest_group_commit_per_sec":[0-9.]*' "$work/bench.json" || true
