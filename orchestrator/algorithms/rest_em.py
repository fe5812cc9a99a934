"""ReST-EM (Singh et al., 2023; SEAL's outer loop): sample edits, keep those with positive reward, SFT the
teacher on them through TRL's ``SFTTrainer``, repeat. There is no ReST-EM trainer in TRL: it is exactly
generate → score → filter → SFT."""

from __future__ import annotations

import logging
import time

from core.records import EditResult
from orchestrator.algorithms.base import (
    Algorithm,
    RoundReport,
    make_report,
    score_edits,
)

log = logging.getLogger(__name__)


KEEP_RULES = ("best_of_k", "threshold", "seal", "above_mean")


def select_edits(results: list[EditResult], rule: str, threshold: float) -> list[EditResult]:
    """``best_of_k``: per context, the highest-reward edit if its reward > threshold (ties: lowest sample
    index). ``threshold``: every edit with reward > threshold. ``seal``: SEAL's rule (its
    ``build_SFT_dataset.py``, top 1 of k by adapted score): per context, the highest-reward edit whatever its
    sign, since all k edits of a context share the baseline, the best gain is the best relative to the other
    samples; edits that no student could use (recorded errors or a penalty) are never kept. ``above_mean``
    (not in SEAL; several kept edits per context): every usable edit whose reward exceeds the mean reward of
    its context's usable edits by more than ``threshold``, i.e. a positive advantage over the other samples,
    as GRPO's group baseline but imitated by SFT; a context with one usable edit keeps nothing."""
    if rule == "threshold":
        return [r for r in results if r.reward > threshold]
    if rule not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {rule!r}; use one of {KEEP_RULES}")
    if rule == "above_mean":
        groups: dict[str, list[EditResult]] = {}
        for r in results:
            if _usable(r):
                groups.setdefault(r.edit.context_id, []).append(r)
        kept = []
        for group in groups.values():
            mean = sum(r.reward for r in group) / len(group)
            kept += [r for r in group if len(group) > 1 and r.reward - mean > threshold]
        return kept
    best: dict[str, EditResult] = {}
    for r in results:
        if rule == "seal" and not _usable(r):
            continue
        cur = best.get(r.edit.context_id)
        if cur is None or r.reward > cur.reward:
            best[r.edit.context_id] = r
    if rule == "seal":
        return list(best.values())
    return [r for r in best.values() if r.reward > threshold]


def _usable(r: EditResult) -> bool:
    """Whether any student could train on the edit (no penalty, at least one adapted score)."""
    return not r.penalty and any(o.adapted is not None for o in r.per_student.values())


class RestEM(Algorithm):
    name = "rest_em"
    reopens_final_round = (
        True  # the last round samples and scores as every round does; only the SFT is skipped
    )

    def train(self, round_index: int) -> RoundReport:
        ctx, cfg = self.ctx, self.ctx.cfg
        started = time.time()
        train = score_edits(ctx, ctx.task.train_contexts(), round_index, heldout=False)
        heldout = score_edits(ctx, ctx.task.heldout_contexts(), round_index, heldout=True)
        kept, loss = [], None
        if round_index < cfg.algorithm.rounds:
            kept = select_edits(train, cfg.algorithm.keep, cfg.algorithm.threshold)
            if kept:
                pairs = [(r.edit.prompt, r.edit.text) for r in kept]
                loss = ctx.teacher.train(
                    pairs,
                    seed=cfg.run.seed + round_index,
                    progress=False,
                    tracking=ctx.tracker.trainer_settings(f"teacher_round_{round_index}"),
                )
                log.info(
                    "round %d: teacher trained on %d kept edits (loss %.4f)", round_index, len(kept), loss
                )
            else:
                log.warning(
                    "round %d: no edit was kept (keep=%s, threshold %s); the teacher is not updated",
                    round_index,
                    cfg.algorithm.keep,
                    cfg.algorithm.threshold,
                )
            self.save_checkpoint(round_index + 1)
        return make_report(ctx, round_index, train, heldout, len(kept), started, loss)
