"""ReST-EM (Singh et al., 2023; SEAL's outer loop): sample edits, keep those with positive reward, SFT the
teacher on them through TRL's ``SFTTrainer``, repeat. There is no ReST-EM trainer in TRL: it is exactly
generate → score → filter → SFT."""

from __future__ import annotations

import logging
import time

from orchestrator.algorithms.base import (
    RoundReport,
    RunContext,
    load_teacher,
    make_report,
    save_teacher,
    score_edits,
)
from orchestrator.records import EditResult

log = logging.getLogger(__name__)


def select_edits(results: list[EditResult], rule: str, threshold: float) -> list[EditResult]:
    """``best_of_k``: per context, the highest-reward edit if its reward > threshold (ties: lowest sample
    index). ``threshold``: every edit with reward > threshold."""
    if rule == "threshold":
        return [r for r in results if r.reward > threshold]
    if rule != "best_of_k":
        raise ValueError(f"unknown keep rule {rule!r}; use best_of_k or threshold")
    best: dict[str, EditResult] = {}
    for r in results:
        cur = best.get(r.edit.context_id)
        if cur is None or r.reward > cur.reward:
            best[r.edit.context_id] = r
    return [r for r in best.values() if r.reward > threshold]


class RestEM:
    name = "rest_em"

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

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
                loss = ctx.teacher.train(pairs, seed=cfg.run.seed + round_index, progress=False)
                log.info(
                    "round %d: teacher trained on %d kept edits (loss %.4f)", round_index, len(kept), loss
                )
            else:
                log.warning(
                    "round %d: no edit had reward > %s; the teacher is not updated",
                    round_index,
                    cfg.algorithm.threshold,
                )
            self.save_checkpoint(round_index + 1)
        return make_report(ctx, round_index, train, heldout, len(kept), started, loss)

    def save_checkpoint(self, round_index: int) -> None:
        save_teacher(self.ctx, round_index)

    def load_checkpoint(self, round_index: int) -> None:
        load_teacher(self.ctx, round_index)

    def cleanup(self) -> None:
        pass
