#!/usr/bin/env bash
# The GPU search benchmark on the GPU machine, in parts that each fit one command of at most 9 minutes.
# Run from the project's root there, with .whl/ (prepare_wheels.sh) beside it:
#
#   bash benchmarks/gpu_search_h200.sh full   # data + analysis, then the full-fidelity search: 16 configs one at a
#                                             # time, a process per trial (re-run until it prints "full: done")
#   bash benchmarks/gpu_search_h200.sh rest   # packing probe + packed proxy search + top-1 at full fidelity, then the
#                                             # report: $OUT/gpu_search.json (commit as benchmarks/results/gpu_search.json)
#   bash benchmarks/gpu_search_h200.sh all    # everything in one command when time allows
#
# The parts share runs/gpu_search (kept between commands while the machine stays up) and one seed; every command
# also copies the state (study database, results, timings) to $OUT so that nothing measured is lost.
part=${1:-all}
source .whl/prelude.sh || exit 3
set -u
out=${OUT:-runs/out}
mkdir -p "$out/state"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
# A fresh machine (the earlier one went back): restore the state a previous command wrote to $OUT/state, placed by
# the caller in gpu_state/ at the project root (an untracked folder travels with the working tree). The data and
# its analysis are regenerated identically from the seed.
if [ -d gpu_state ] && [ ! -f runs/gpu_search/bench_state.json ]; then
  mkdir -p runs/gpu_search/work/hpo/bench-full runs/gpu_search/work/hpo/bench-proxy
  cp gpu_state/bench_state.json runs/gpu_search/ 2>/dev/null || true
  cp gpu_state/study.db runs/gpu_search/work/hpo/ 2>/dev/null || true
  cp gpu_state/bench-full.results.json runs/gpu_search/work/hpo/bench-full/results.json 2>/dev/null || true
  cp gpu_state/bench-proxy.results.json runs/gpu_search/work/hpo/bench-proxy/results.json 2>/dev/null || true
  echo "restored the benchmark state from gpu_state/"
fi
bench() {
  python3 benchmarks/bench_gpu_search.py --work runs/gpu_search --out "$out/gpu_search.json" \
    --cases 24 --size 96 --roi 96 --filters 32 --batch_size 2 --n 16 --epochs 8 --width 0.25 \
    --data_fraction 0.25 --spacing 0.7,0.7,1.4 --devices auto --trials_per_device auto --probe_s 4 "$@" 2>&1 \
    | grep -v -i -e "warning" -e "warn(" | tail -n 40
  return "${PIPESTATUS[0]}"
}
rc=0
case "$part" in
  # The full part stops starting trials after 330 s of search (its running trial finishes), so that data
  # preparation + search stay under 9 minutes; re-running it continues.
  full) bench --part full --budget_s 330 || rc=$? ;;
  rest) { bench --part proxy && bench --part report; } || rc=$? ;;
  all) bench --part all || rc=$? ;;
  *) echo "usage: $0 full|rest|all" >&2; exit 2 ;;
esac
cp runs/gpu_search/bench_state.json "$out/state/" 2>/dev/null || true
for s in bench-full bench-proxy; do
  cp "runs/gpu_search/work/hpo/$s/results.json" "$out/state/$s.results.json" 2>/dev/null || true
  cp "runs/gpu_search/work/hpo/$s/probe/probe.json" "$out/state/$s.probe.json" 2>/dev/null || true
done
cp runs/gpu_search/work/hpo/study.db "$out/state/study.db" 2>/dev/null || true
exit "$rc"
