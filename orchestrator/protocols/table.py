"""The eval table: one row per (source, student), averaged per question over a source's updates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.protocols.common import Answer, UpdateResult

Triple = tuple[str, str, str]  # (question, gold, prediction): what the judge grades


@dataclass
class Row:
    source: str
    student: str
    em: float
    f1: float
    gold_logprob: float
    n_questions: int
    judge: float | None = None  # fraction of answers the judge calls correct (None: no judge configured)
    n_updates: int = 0  # updates made (0 for base)
    n_failed: int = 0  # updates that could not be applied (scored as the unchanged student)
    n_passages: int = 0
    # standard errors over passages: the spread of per-passage means (each the mean over the passage's
    # questions), / sqrt(passages); 0 with one passage
    em_se: float = 0.0
    f1_se: float = 0.0
    gold_logprob_se: float = 0.0


def triple(a: Answer) -> Triple:
    return (a.question, a.gold, a.prediction)


def summarize(results: list[UpdateResult], verdicts: Mapping[Triple, bool] | None = None) -> list[Row]:
    """Rows in the order (source, student) first appear. Each question's scores are averaged over the
    updates that answered it (e.g. the k edits of its passage), then questions are averaged."""
    keys = list(dict.fromkeys((r.source, r.student) for r in results if r.counted))
    rows = []
    for source, student in keys:
        every = [r for r in results if (r.source, r.student) == (source, student)]
        mine = [r for r in every if r.counted]
        per_q: dict[tuple[str, int], list[Answer]] = {}
        for r in mine:
            for a in r.answers:
                per_q.setdefault((a.context_id, a.question_index), []).append(a)
        mean = _question_mean(per_q)
        se = _passage_se(per_q)
        rows.append(
            Row(
                source=source,
                student=student,
                em=mean(lambda a: a.em),
                f1=mean(lambda a: a.f1),
                gold_logprob=mean(lambda a: a.logprob),
                n_questions=len(per_q),
                judge=None if verdicts is None else mean(lambda a: float(verdicts[triple(a)])),
                n_updates=sum(1 for r in every if r.n_items or r.error),
                n_failed=sum(1 for r in every if r.error),
                n_passages=len({cid for cid, _ in per_q}),
                em_se=se(lambda a: a.em),
                f1_se=se(lambda a: a.f1),
                gold_logprob_se=se(lambda a: a.logprob),
            )
        )
    return rows


def _passage_se(
    per_q: dict[tuple[str, int], list[Answer]],
) -> Callable[[Callable[[Answer], float]], float]:
    """Standard error over passages of a per-answer value (question means, then passage means)."""

    def se(value: Callable[[Answer], float]) -> float:
        by_passage: dict[str, list[float]] = {}
        for (cid, _), v in per_q.items():
            by_passage.setdefault(cid, []).append(sum(value(a) for a in v) / len(v))
        means = [sum(v) / len(v) for v in by_passage.values()]
        n = len(means)
        if n < 2:
            return 0.0
        mu = sum(means) / n
        return math.sqrt(sum((m - mu) ** 2 for m in means) / (n - 1) / n)

    return se


def _question_mean(
    per_q: dict[tuple[str, int], list[Answer]],
) -> Callable[[Callable[[Answer], float]], float]:
    """Averages a per-answer value within each question, then over questions."""

    def mean(value: Callable[[Answer], float]) -> float:
        qs = [sum(value(a) for a in v) / len(v) for v in per_q.values()]
        return sum(qs) / len(qs) if qs else 0.0

    return mean


def markdown_table(rows: list[Row]) -> str:
    judge = any(r.judge is not None for r in rows)
    head = ["source", "student", "EM ± se", "F1 ± se", "gold log-prob ± se"] + (["judge"] if judge else [])
    head += ["questions", "updates", "failed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.source,
            r.student,
            f"{r.em:.3f} ± {r.em_se:.3f}",
            f"{r.f1:.3f} ± {r.f1_se:.3f}",
            f"{r.gold_logprob:.3f} ± {r.gold_logprob_se:.3f}",
        ]
        if judge:
            cells.append("n/a" if r.judge is None else f"{r.judge:.3f}")
        cells += [str(r.n_questions), str(r.n_updates), str(r.n_failed)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
