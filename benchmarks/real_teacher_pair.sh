#!/usr/bin/env bash
# Does a ReST-EM-trained SmolLM2 teacher write better edits than the untrained one on passages neither saw?
# Paired design (the real-models issue's next step): 8 held-out passages give a standard error of ~0.1, too
# coarse for an effect of ~0.05, so both teachers write k edits for the same 60 unseen dev passages
# (41-100; the SEAL table reports 1-40, the loop trains on train-split passages) and one student is updated
# on every edit; seal_table.py --pair reports trained - untrained per passage.
#
#   bash benchmarks/real_teacher_pair.sh [TAG]   # ~2 h on one core; writes benchmarks/results/real_teacher_pair*.json
#   QUICK=1 bash benchmarks/real_teacher_pair.sh # the loop's --quick settings, 2 passages, 1 edit each (a test
#                                                # runs it; results under runs/benchmarks/, never the committed ones)
# Environment: PY / TE (python and teachedit, default .venv/bin/...), RUNS (default runs), OUT (results folder);
# LOOP_OVERRIDES (more key=value overrides for the loop, e.g. "task.num_train_contexts=22 algorithm.rounds=1"),
# ROUND (the trained teacher's round, default 2), SKIP / LIMIT / K (the compared dev passages and edits each).
set -euo pipefail
TAG=${1:-pair}
PY=${PY:-.venv/bin/python}
TE=${TE:-.venv/bin/teachedit}
RUNS=${RUNS:-runs}
DATA=orchestrator/data/squad/passages.json
if [[ -n "${QUICK:-}" ]]; then
    OUT=${OUT:-$RUNS/benchmarks}
    LOOP=(--quick) SKIP=40 LIMIT=2 K=1 ROUND=1 SHORT=(teacher.generation.max_new_tokens=24)
else
    OUT=${OUT:-benchmarks/results}
    LOOP=() SKIP=${SKIP:-40} LIMIT=${LIMIT:-60} K=${K:-3} ROUND=${ROUND:-2} SHORT=()
fi
read -r -a EXTRA <<< "${LOOP_OVERRIDES:-}"
mkdir -p "$OUT" "$RUNS/$TAG-edits"
# 1. the loop with the stronger teacher update (README attempt 2), SmolLM2 student only
$PY benchmarks/real_loop.py "${LOOP[@]}" --students smollm2 --seeds 0 --tag "$TAG" \
    --out "$OUT/real_teacher_${TAG}_loop.json" \
    "run.output_dir=$RUNS" teacher.train.learning_rate=1e-3 teacher.train.epochs=4 "${EXTRA[@]}"
# 2. both teachers (untrained; after the loop's last update) write K edits for each of dev passages 41-100 (same sampling settings and seed)
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip $SKIP --limit $LIMIT --k $K \
    --out "$RUNS/$TAG-edits/untrained.json" run.progress=false "${SHORT[@]}"
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip $SKIP --limit $LIMIT --k $K \
    --out "$RUNS/$TAG-edits/trained.json" run.progress=false "${SHORT[@]}" \
    teacher.model.gguf=null "teacher.model.path=$RUNS/$TAG-seed0/teacher/round_$ROUND"
# 3. one SmolLM2 update per edit, scored without the passage; then the paired difference
#    (no --skip here: eval keeps the passages every --edits file covers, which are exactly those LIMIT)
$TE eval configs/real_cpu.yaml run.progress=false "run.output_dir=$RUNS" --students smollm2 --data $DATA \
    --limit $LIMIT --k $K --sources base,passage,edits --name "$TAG-eval" \
    --edits "$RUNS/$TAG-edits/trained.json" "$RUNS/$TAG-edits/untrained.json"
$PY benchmarks/seal_table.py "$RUNS/$TAG-eval" --pair trained untrained --out "$OUT/real_teacher_${TAG}.json"
