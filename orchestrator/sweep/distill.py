"""The sweep's logit-distillation row: the protocol's updates with the teacher's logits (TRL's GKD, or GOLD
across tokenizers, :mod:`student.distill`) instead of fine-tuning on the edit text."""

from __future__ import annotations

import time
from typing import Any

from core.config import Config, StudentConfig
from core.records import Context
from orchestrator.protocols.common import BaseAnswers, Settings, UpdateResult
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.sources import DISTILL, Sources, SweepSource
from student.lifecycle import update_seed


class DistillRow:
    """Computes the distillation row's cells; the teacher is loaded once, on the first cell."""

    def __init__(self, cfg: Config, sources: Sources):
        self.cfg, self.sources = cfg, sources
        self._teacher: Any = None

    def release(self) -> None:
        self._teacher = None

    def skip_reason(self, sc: StudentConfig, src: SweepSource | None) -> str | None:
        """Distillation needs the teacher's vocabulary unless GOLD bridges tokenizers; checked on the
        tokenizers alone (cheap)."""
        if src is None or src.kind != DISTILL:
            return None
        from core.models import load_tokenizer
        from orchestrator.models import resolve_model_path
        from student.distill import shares_vocabulary

        if self.cfg.sweep.distill.cross_tokenizer == "gold":
            return None  # another tokenizer: GOLD's ULD loss
        path = resolve_model_path(sc.model, "student", self.sources.task, self.cfg.run.cache_dir)
        tpath = src.path or self.sources.teacher_path()
        teacher_tok = load_tokenizer(tpath, self.sources.teacher_mc(tpath))
        if shares_vocabulary(load_tokenizer(path, sc.model), teacher_tok):
            return None
        return "tokenizer differs from the teacher's (sweep.distill.cross_tokenizer=skip)"

    def cell(
        self,
        cell: Cell,
        src: SweepSource,
        student: Any,
        contexts: list[Context],
        settings: Settings,
        base: BaseAnswers,
    ) -> list[UpdateResult]:
        """The protocol's updates with logit distillation instead of fine-tuning on edit text: per passage
        one update per teacher edit (single), or one update on all edits of ``cpt_n`` passages (cpt)."""
        from orchestrator.protocols.cpt import groups

        teacher_src = self.sources.source(DISTILL, self.cfg.sweep.distill.teacher)
        texts, prompts = self.sources.teacher_edits(teacher_src, contexts)
        if self._teacher is None:
            self._teacher = self.sources.load_teacher(teacher_src)
        k = settings.k

        def examples(group: list[Context]) -> list[Any]:
            from student.distill import DistillExample

            return [DistillExample(prompts[c.id], t) for c in group for t in texts[c.id][: k or None]]

        if cell.protocol == "single":
            plan = [(i, [c], [ex]) for c in contexts for i, ex in enumerate(examples([c]))]
        else:
            plan = [(g, group, examples(group)) for g, group in enumerate(groups(contexts, settings.n))]
        from student.distill import shares_vocabulary

        # another tokenizer: GOLD's ULD loss, reading the teacher's tokenizer from its folder (compared once per
        # cell: building both vocabularies costs ~0.1 s for a 262k-token tokenizer)
        teacher = self._teacher
        cross = None if shares_vocabulary(student.tok, teacher.tok) else teacher.tok.name_or_path
        return [
            self.update(student, src.name, step, group, exs, settings, base, cross)
            for step, group, exs in plan
        ]

    def update(
        self,
        student: Any,
        name: str,
        step: int,
        group: list[Context],
        examples: list[Any],
        settings: Settings,
        base: BaseAnswers,
        cross: str | None,
    ) -> UpdateResult:
        from orchestrator.protocols.common import answer_questions
        from student.distill import distilled
        from student.lifecycle import EditError

        started = time.time()
        ids = [c.id for c in group]
        seed = update_seed(settings.run_seed, name, student.name, step, ids)
        teacher = self._teacher
        loss, error = None, None
        try:
            with distilled(
                student,
                teacher.model,
                examples,
                self.cfg.sweep.distill,
                seed,
                not teacher.uses_chat_template,
                teacher_tokenizer=cross,
            ) as loss:
                answers = answer_questions(student, group)
        except EditError as exc:
            answers, error = base.get(student, group), str(exc)
        return UpdateResult(
            source=name,
            student=student.name,
            step=step,
            context_ids=ids,
            answers=answers,
            train_loss=loss,
            error=error,
            seconds=time.time() - started,
            n_items=len(examples),
        )
