#!/usr/bin/env bash
# Does a ReST-EM-trained SmolLM2 teacher write better edits than the untrained one on passages neither saw?
# Paired design (the real-models issue's next step): 8 held-out passages give a standard error of ~0.1, too
# coarse for an effect of ~0.05, so both teachers write k edits for the same 60 unseen dev passages
# (41-100; the SEAL table reports 1-40, the loop trains on train-split passages) and one student is updated
# on every edit; seal_table.py --pair reports trained - untrained per passage.
#
#   bash benchmarks/real_teacher_pair.sh [TAG]      # ~1-2 h on one core; writes benchmarks/results/real_teacher_pair*.json
set -euo pipefail
TAG=${1:-pair}
PY=${PY:-.venv/bin/python}
TE=${TE:-.venv/bin/teachedit}
DATA=orchestrator/data/squad/passages.json
# 1. the loop with the stronger teacher update (README attempt 2), SmolLM2 student only
$PY benchmarks/real_loop.py --students smollm2 --seeds 0 --tag "$TAG" \
    --out "benchmarks/results/real_teacher_${TAG}_loop.json" \
    teacher.train.learning_rate=1e-3 teacher.train.epochs=4
# 2. both teachers write 3 edits for each of dev passages 41-100 (same sampling settings and seed)
mkdir -p "runs/$TAG-edits"
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip 40 --limit 60 --k 3 \
    --out "runs/$TAG-edits/untrained.json" run.progress=false
$PY benchmarks/teacher_edits.py configs/real_cpu.yaml --data $DATA --skip 40 --limit 60 --k 3 \
    --out "runs/$TAG-edits/trained.json" run.progress=false \
    teacher.model.gguf=null "teacher.model.path=runs/$TAG-seed0/teacher/round_2"
# 3. one SmolLM2 update per edit, scored without the passage; then the paired difference
$TE eval configs/real_cpu.yaml run.progress=false --students smollm2 --data $DATA --skip 40 --limit 60 \
    --k 3 --sources base,passage,edits --name "$TAG-eval" \
    --edits "runs/$TAG-edits/trained.json" "runs/$TAG-edits/untrained.json"
$PY benchmarks/seal_table.py "runs/$TAG-eval" --pair trained untrained \
    --out "benchmarks/results/real_teacher_${TAG}.json"
