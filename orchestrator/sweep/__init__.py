"""``teachedit sweep``: which edits transfer to which students.

A matrix of *edit sources* (``passage``, edit files such as the bundled GPT-4.1 and Qwen2.5-7B edits, teacher
checkpoints, e.g. every round of a ``teachedit run`` directory) x *students* (the config's) x *protocols*
(``single``, ``cpt`` of :mod:`orchestrator.protocols`), plus an optional logit-distillation row
(:mod:`student.distill`) for students that share the teacher's tokenizer. Each cell is scored against the
unchanged student (``base``) on the same passages: the mean gain per passage, with its standard error.

Every cell is cached under ``<run.output_dir>/<sweep.name or run.name>/cells/<key>.json``; the key hashes what
the cell depends on (source content, student spec, protocol settings, passages, seed), so a second invocation
recomputes nothing and changing one student recomputes only its cells. Teachers' edits are cached as
SEAL-format files under ``edits/`` (reusable with ``teachedit eval --edits``). Outputs: ``sweep.json``,
``sweep.md`` and ``heatmap.png`` (see :mod:`orchestrator.sweep.report`).

The package, by concern: :mod:`~orchestrator.sweep.cells` (a cell's identity and its cache),
:mod:`~orchestrator.sweep.sources` (the rows: checks, edit sources, teachers and their edits, a teacher run
trained first), :mod:`~orchestrator.sweep.distill` (the logit-distillation row),
:mod:`~orchestrator.sweep.matrix` (students x sources x protocols, cell by cell) and
:mod:`~orchestrator.sweep.report` (gains, transfer, markdown, heatmap).
"""

from orchestrator.sweep.matrix import Sweep, SweepOutcome, run_sweep, sweep_dir
from orchestrator.sweep.sources import check_sweep, ensure_teacher_run

__all__ = ["Sweep", "SweepOutcome", "check_sweep", "ensure_teacher_run", "run_sweep", "sweep_dir"]
