#!/usr/bin/env bash
# The GPU search benchmark on the GPU machine, in parts that each fit one command of at most 9 minutes.
# Run from the project's root there, with .whl/ (prepare_wheels.sh) beside it:
#
#   bash benchmarks/gpu_search_h200.sh full     # full-fidelity search, 16 configs one at a time (re-run until "done")
#   bash benchmarks/gpu_search_h200.sh proxy    # packing probe + packed proxy search + top-1 at full fidelity
#   bash benchmarks/gpu_search_h200.sh report   # writes $OUT/gpu_search.json (commit as benchmarks/results/)
#   bash benchmarks/gpu_search_h200.sh all      # the three in one command when time allows
#
# The parts share runs/gpu_search (kept between commands while the machine stays up) and one seed; each part
# also copies its state (study database, results, timings) to $OUT so that nothing measured is lost.
part=${1:-all}
source .whl/prelude.sh || exit 3
set -u
out=${OUT:-runs/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
# The full part stops starting trials after 420 s (its running trial finishes), so one command stays under 9 minutes.
budget=()
if [ "$part" = full ]; then budget=(--budget_s 420); fi
python3 benchmarks/bench_gpu_search.py --part "$part" --work runs/gpu_search --out "$out/gpu_search.json" \
    --cases 24 --size 96 --roi 96 --filters 32 --batch_size 2 --n 16 --epochs 12 --width 0.25 \
    --data_fraction 0.25 --devices auto --trials_per_device auto --probe_s 4 "${budget[@]}" 2>&1 \
    | grep -v -i "warning" | tail -n 60
rc=${PIPESTATUS[0]}
mkdir -p "$out/state"
cp runs/gpu_search/bench_state.json "$out/state/" 2>/dev/null || true
for s in bench-full bench-proxy; do
  cp "runs/gpu_search/work/hpo/$s/results.json" "$out/state/$s.results.json" 2>/dev/null || true
  cp "runs/gpu_search/work/hpo/$s/probe/probe.json" "$out/state/$s.probe.json" 2>/dev/null || true
done
cp runs/gpu_search/work/hpo/study.db "$out/state/study.db" 2>/dev/null || true
exit "$rc"
