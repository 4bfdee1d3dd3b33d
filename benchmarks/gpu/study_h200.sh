#!/bin/bash
# The proxy benchmark at GPU scale (one H200), one resumable piece at a time.
#
# Trains the study's tabular benchmark for TASK (spleen_ct | prostate_mr) on 96^3 phantoms with roi 64^3 and the
# template's SegResNetDS with 32 filters, K=24 configurations x every fidelity, one trial at a time on the GPU (so
# each run's device time is its own). The piece stops starting runs after MINUTES and stops the running one (not
# stored), exports the table and a quick report under $OUT/TASK, and exits; the next piece resumes from the table
# committed under docs/study_results/TASK/h200/. Pieces of 9 minutes: MINUTES=6 leaves time for the set-up
# (phantoms, data analysis, subsets: about a minute) and the table export.
#
# On this machine, once:   bash ../shared/device/prepare_wheels.sh        (fills .whl/, git-ignored)
# On the GPU machine:      source .whl/prelude.sh || exit 3; bash benchmarks/gpu/study_h200.sh spleen_ct 6
# Back here:               cp <files_at>/spleen_ct/table.jsonl docs/study_results/spleen_ct/h200/ && git commit
# Full report from the committed table (any machine, no training):
#   python -m proxy_bundle study <the options below> --table docs/study_results/spleen_ct/h200/table.jsonl \
#       --work_dir W --train False
# SIZE, ROI, FILTERS, CASES, EXTERNAL, EPOCHS and K override the sizes (a dry run on CPU: SIZE=24 ROI=16 ...).
set -euo pipefail
TASK=${1:-spleen_ct}
MINUTES=${2:-6}
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || { echo "error: $MINUTES: MINUTES must be whole minutes" >&2; exit 2; }
case "$TASK" in spleen_ct|prostate_mr) ;; *) echo "error: $TASK: task must be spleen_ct or prostate_mr" >&2; exit 2;; esac
OUT_DIR=${OUT:-/tmp/study_h200_out}/$TASK
WORK=${STUDY_WORK:-/tmp/study_h200}/$TASK
COMMITTED=docs/study_results/$TASK/h200/table.jsonl
mkdir -p "$OUT_DIR" "$WORK"
if [ -f "$COMMITTED" ]; then cp "$COMMITTED" "$WORK/table.jsonl"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>/dev/null || true
# One run per GPU (every visible GPU is used) keeps device-time costs load-independent; 4 CPU threads per run.
timeout $((MINUTES * 60 + 150)) python3 -m proxy_bundle study --task "$TASK" --work_dir "$WORK" --table "$WORK/table.jsonl" \
    --size "${SIZE:-96}" --roi "${ROI:-64}" --init_filters "${FILTERS:-32}" --num_cases "${CASES:-32}" \
    --num_external "${EXTERNAL:-8}" --epochs "${EPOCHS:-12}" --n_configs "${K:-24}" \
    --devices auto --threads 4 --max_minutes "$MINUTES" --replay_seeds 20 --bootstrap 0 --progress False \
    2>&1 | grep -v -e "Warning" -e "warn(" | tail -n 40 || true
for f in table.jsonl results.json report.md fig_regret_vs_cost.png fig_agreement.png invocations.json; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$OUT_DIR/"; fi
done
echo "piece done: $(wc -l < "$OUT_DIR/table.jsonl" 2>/dev/null || echo 0) runs in $OUT_DIR/table.jsonl"
