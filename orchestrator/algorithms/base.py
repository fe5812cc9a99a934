"""The outer-loop contract (one small protocol, like torchtune's recipes) and the steps algorithms share."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import Config
from core.distributed import all_gather, on_rank0
from core.records import Context, Edit, EditResult
from core.stats import mean_sem
from orchestrator.rewards import assign_configured_rewards, edit_penalty
from orchestrator.rundir import RunDir
from orchestrator.tracking import NO_TRACKER, Tracker

if TYPE_CHECKING:  # annotations only: the roles are built by the orchestrator (orchestrator.models)
    from core.task import Task
    from student.distributed import DistributedPool
    from student.pool import StudentPool
    from teacher.model import Teacher

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything an algorithm works with. Built by the orchestrator; algorithms do not build roles."""

    cfg: Config
    task: Task
    teacher: Teacher
    pool: StudentPool | DistributedPool
    rundir: RunDir
    progress: bool = False
    initial_teacher: str = ""  # path or hub id of the round-0 teacher
    tracker: Tracker = NO_TRACKER  # run.report_to: every trainer and the round metrics


@dataclass
class RoundReport:
    """One line of metrics.jsonl, and one entry of summary.json's ``rounds``."""

    round: int
    mean_reward: float
    heldout_mean_reward: float | None
    heldout_sem: float | None
    kept: int
    seconds: float
    per_student: dict[str, dict[str, float]]
    teacher_loss: float | None = None
    edit_styles: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    student_evals: int = 0  # (edit, student) adaptations this round, training + held-out; the budget
    train_student_evals: int = 0  # of which on training contexts (what the teacher learns from)


class Algorithm(ABC):
    """An outer loop. ``train(r)`` scores round r's edits and updates the teacher (except after the last
    round); ``save_checkpoint``/``load_checkpoint`` persist and restore the teacher after k updates (by
    default as ``teacher/round_<k>``, :func:`save_teacher` / :func:`load_teacher`)."""

    name: str
    ctx: RunContext
    # Whether the final round scores the records its training round would (ReST-EM: sample, score, then
    # train), so a finished run can be extended by reopening it as a training round (Runner, --resume).
    reopens_final_round: bool = False

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def train(self, round_index: int) -> RoundReport: ...

    def save_checkpoint(self, round_index: int) -> None:
        save_teacher(self.ctx, round_index)

    def load_checkpoint(self, round_index: int) -> None:
        load_teacher(self.ctx, round_index)

    def cleanup(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Release what the algorithm holds beyond the run context (called once, after the last round)."""


def score_edits(
    ctx: RunContext, contexts: list[Context], round_index: int, heldout: bool
) -> list[EditResult]:
    """Propose edits for ``contexts`` (or reuse the persisted proposals), evaluate those not yet scored on the
    pool, assign rewards and append each record as it completes. Returns all of the round's results."""
    cfg, rd = ctx.cfg, ctx.rundir
    tag = "heldout" if heldout else "train"
    proposals = f"edits/round_{round_index}.{tag}.proposed.json"

    def persisted() -> list[Edit] | None:
        if (rd.path / proposals).exists():
            return [Edit(**e) for e in _read_json(rd.path / proposals)]
        return None

    def scored_records() -> dict[tuple[str, bool], EditResult]:
        return {(r.edit.key, r.heldout): r for r in rd.edits(round_index)}

    # Under a launcher rank 0 reads the run directory and every rank gets what it read; the teacher samples
    # new edits on every rank, each its share of the contexts, gathered in order (Teacher.propose).
    edits = on_rank0(persisted)
    if edits is None:
        seed = cfg.run.seed * 1000 + round_index * 2 + int(heldout)
        edits = ctx.teacher.propose(contexts, round_index, seed, progress=ctx.progress)
        records = [e.__dict__ for e in edits]
        on_rank0(lambda: rd.write_json(proposals, records))  # rank 0 writes; a disk error stops every rank
    done = on_rank0(scored_records)
    todo = [e for e in edits if (e.key, heldout) not in done]
    if len(todo) < len(edits):
        log.info(
            "round %d %s: %d of %d edits already scored, resuming",
            round_index,
            tag,
            len(edits) - len(todo),
            len(edits),
        )
    by_id = {c.id: c for c in contexts}
    ctx.pool.baselines(contexts, progress=ctx.progress)
    score_batch(ctx, todo, by_id, round_index, heldout, desc=f"round {round_index} {tag}: adapting students")
    scored = on_rank0(scored_records)
    return [scored[(e.key, heldout)] for e in edits]


def score_batch(
    ctx: RunContext,
    edits: list[Edit],
    contexts: dict[str, Context],
    round_index: int,
    heldout: bool,
    desc: str = "adapting students",
) -> list[EditResult]:
    """Score ``edits`` (in order) and persist each record as it completes. Degenerate edits (see
    :func:`orchestrator.rewards.edit_penalty`) get the penalty without a student pass; all others go to the pool
    in exactly one ``evaluate`` call, made even when there are none, so that every rank of a distributed pool
    makes the same number of pool calls. Baselines of ``contexts`` must be cached (``pool.baselines``).

    Under a launcher the ranks' edits are pooled first (ReST-EM's are the same on every rank, GRPO's differ):
    every rank scores and records the union, and each gets back the results of its own edits."""
    cfg, rd = ctx.cfg, ctx.rundir
    own = [e.key for e in edits]
    edits = _every_ranks_edits(edits)
    weights = {s.name: s.weight for s in cfg.students}
    validate = ctx.task.validate_edit
    done: dict[str, EditResult] = {}

    def finish(result: EditResult) -> None:
        result.heldout = heldout
        assign_configured_rewards(result, cfg.reward, weights)
        rd.append_edit(round_index, result)
        done[result.edit.key] = result

    valid = []
    for e in edits:
        reason = edit_penalty(e.text, cfg.reward.max_edit_chars, validate)
        if reason is None:
            valid.append(e)
        else:
            finish(ctx.pool.unadapted(e, contexts[e.context_id], reason))
    ctx.pool.evaluate(valid, contexts, cfg.run.seed, on_result=finish, progress=ctx.progress, desc=desc)
    return [done[key] for key in own]


def _every_ranks_edits(edits: list[Edit]) -> list[Edit]:
    """The union of the ranks' edits by key, in rank order (one process: ``edits`` itself)."""
    parts = all_gather(edits)
    if len(parts) == 1:
        return edits
    union: dict[str, Edit] = {}
    for part in parts:
        for e in part:
            union.setdefault(e.key, e)
    return list(union.values())


def _read_json(path: Any) -> Any:
    import json

    with open(path) as f:
        return json.load(f)


def per_context_rewards(results: list[EditResult]) -> list[float]:
    """Mean reward per context (the unit whose spread the standard error describes)."""
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r.edit.context_id, []).append(r.reward)
    return [sum(v) / len(v) for v in by.values()]


def per_student_summary(results: list[EditResult], score: str) -> dict[str, dict[str, float]]:
    """Per student: mean baseline and adapted score (on ``score``) and mean reward over ``results``."""
    out: dict[str, dict[str, float]] = {}
    names = results[0].per_student.keys() if results else []
    for name in names:
        outs = [r.per_student[name] for r in results]
        ok = [o for o in outs if o.adapted is not None]
        out[name] = {
            "baseline": sum(o.baseline.get(score) for o in outs) / len(outs),
            "adapted": sum(o.adapted.get(score) for o in ok) / len(ok) if ok else float("nan"),
            "reward": sum(o.reward for o in outs) / len(outs),
            "failed": len(outs) - len(ok),
        }
    return out


def make_report(
    ctx: RunContext,
    round_index: int,
    train: list[EditResult],
    heldout: list[EditResult],
    kept: int,
    started: float,
    teacher_loss: float | None,
) -> RoundReport:
    mean_train, _ = mean_sem([r.reward for r in train])
    held_m, held_sem = mean_sem(per_context_rewards(heldout)) if heldout else (None, None)
    styles: dict[str, int] = {}
    for r in train + heldout:
        k = ctx.task.classify_edit(r.edit.text)
        if k is not None:
            styles[k] = styles.get(k, 0) + 1
    return RoundReport(
        round=round_index,
        mean_reward=mean_train,
        heldout_mean_reward=held_m,
        heldout_sem=held_sem,
        kept=kept,
        seconds=time.time() - started,
        per_student=per_student_summary(heldout or train, ctx.cfg.reward.score),
        teacher_loss=teacher_loss,
        edit_styles=styles,
        errors=sum(1 for r in train + heldout for o in r.per_student.values() if o.error),
        student_evals=student_evals(train + heldout),
        train_student_evals=student_evals(train),
    )


def student_evals(results: list[EditResult]) -> int:
    """(edit, student) pairs sent to the pool: degenerate edits cost none."""
    return sum(len(r.per_student) for r in results if r.penalty is None)


def save_teacher(ctx: RunContext, round_index: int) -> None:
    """Save the teacher after ``round_index`` updates as ``teacher/round_<k>`` (atomic, safetensors)."""
    ctx.teacher.checkpoint = f"round_{round_index}"
    ctx.teacher.save(ctx.rundir.teacher_dir(round_index))


def load_teacher(ctx: RunContext, round_index: int) -> None:
    """Load ``teacher/round_<k>`` into the run's teacher, on the device it is on."""
    ctx.teacher.load_checkpoint(
        ctx.rundir.teacher_dir(round_index), f"round_{round_index}", ctx.cfg.teacher.model
    )
