#!/usr/bin/env bash
# Can SFT carry edit quality into the SmolLM2 teacher at all? (real-models issue, "why the loop does not teach")
# 1. the teacher gets ReST-EM's own update (teacher.train settings of configs/real_cpu.yaml) on the first K_TRAIN
#    of Qwen2.5-7B's edits for each of the 30 bundled SQuAD *train* passages (benchmarks/teacher_distill.py);
# 2. that teacher and the untrained one write K edits for dev passages SKIP+1..SKIP+LIMIT (unseen by both);
# 3. one SmolLM2 update per edit, scored without the passage; seal_table.py --pair: distilled - untrained.
#
#   bash benchmarks/real_teacher_distill.sh [TAG]    # ~40 min on one core; benchmarks/results/real_teacher_TAG.json
#   QUICK=1 bash benchmarks/real_teacher_distill.sh  # 2 passages, 1 short edit each (checks it runs)
# Environment: PY / TE, RUNS (default runs), OUT (results folder), K_TRAIN (default 2), SKIP / LIMIT / K
# (default 40 / 30 / 2: dev passages 41-70, as the loop attempts 4-6 compare on), TRAIN (more key=value
# overrides for the teacher's update, e.g. "teacher.train.learning_rate=1e-3").
set -euo pipefail
TAG=${1:-distill}
PY=${PY:-.venv/bin/python}
TE=${TE:-.venv/bin/teachedit}
RUNS=${RUNS:-runs}
DATA=orchestrator/data/squad/passages.json
EDITS=orchestrator/data/squad/edits_qwen2.5-7b_train.json
if [[ -n "${QUICK:-}" ]]; then
    OUT=${OUT:-$RUNS/benchmarks}
    K_TRAIN=1 SKIP=40 LIMIT=2 K=1 LIMIT_TRAIN=2
    SHORT=(teacher.generation.max_new_tokens=24 teacher.train.epochs=1) EVAL_SHORT=(students.0.adapt.epochs=1)
else
    OUT=${OUT:-benchmarks/results}
    K_TRAIN=${K_TRAIN:-2} SKIP=${SKIP:-40} LIMIT=${LIMIT:-30} K=${K:-2} LIMIT_TRAIN=0 SHORT=() EVAL_SHORT=()
fi
read -r -a TRAIN_OVERRIDES <<< "${TRAIN:-}"
W="$RUNS/$TAG-edits"
mkdir -p "$OUT" "$W"
$PY benchmarks/teacher_distill.py configs/real_cpu.yaml --edits $EDITS --k "$K_TRAIN" --limit $LIMIT_TRAIN \
    --out "$W/teacher" run.progress=false "${SHORT[@]}" "${TRAIN_OVERRIDES[@]}"
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip "$SKIP" --limit "$LIMIT" --k "$K" \
    --out "$W/untrained.json" run.progress=false "${SHORT[@]}"
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip "$SKIP" --limit "$LIMIT" --k "$K" \
    --out "$W/distilled.json" run.progress=false "${SHORT[@]}" teacher.model.gguf=null "teacher.model.path=$W/teacher"
$TE eval configs/real_cpu.yaml run.progress=false "run.output_dir=$RUNS" "${EVAL_SHORT[@]}" --students smollm2 \
    --data $DATA --limit "$LIMIT" --k "$K" --sources base,passage,edits --name "$TAG-eval" \
    --edits "$W/distilled.json" "$W/untrained.json"
$PY benchmarks/seal_table.py "$RUNS/$TAG-eval" --pair distilled untrained --out "$OUT/real_teacher_${TAG}.json"
$PY benchmarks/edit_stats.py "$W/distilled.json" "$W/untrained.json" --foreign $EDITS --out "$OUT/edit_stats_${TAG}.json"
