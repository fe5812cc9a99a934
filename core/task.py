"""The task interface: contexts, held-out questions, how an edit becomes training sequences, how to ask."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from core.records import Context, StudentScore

# A QA line inside an edit: "Q: <question> A: <answer>" (also "Question: ... Answer: ...").
_QA_LINE = re.compile(
    r"^\s*(?:Q|Question)\s*:\s*(?P<q>.+?)\s+(?:A|Answer)\s*:\s*(?P<a>.+?)\s*$", re.IGNORECASE
)
# List markers teachers like to write: "1.", "2)", "-", "*", "•".
_BULLET = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


@dataclass(frozen=True)
class TrainingItem:
    """One inner-loop training sequence. ``prompt`` tokens are masked out of the labels when loss_on=completion.

    ``question`` marks a question-answer item (``completion`` is the answer): a student re-renders its prompt in
    its own QA format (e.g. its chat template, :mod:`student.prompting`). ``rendered`` says the prompt text
    already holds the tokenizer's special tokens (a rendered chat template), so none are added again."""

    prompt: str
    completion: str
    question: str | None = None
    rendered: bool = False


class Task(ABC):
    """What the loop needs from a task: subclass it (the built-ins: :mod:`orchestrator.tasks.synthetic`,
    :mod:`~orchestrator.tasks.squad`, :mod:`~orchestrator.tasks.arc`; a plugin, docs/plugins.md).

    Four methods are required. Every other hook has a default that a task overrides when it needs to; the
    loop, the protocols and the students call the hooks directly, never by probing for them."""

    name: str = "task"
    #: The teacher prompt formats that suit the task (:mod:`core.prompts`); the first pretrains a tiny teacher.
    formats: tuple[str, ...] = ("implications",)
    #: How QA items are prompted in the tiny students' corpus: ``qa_lines`` or SEAL's ``seal``.
    protocol: str = "qa_lines"

    # ---- required
    @abstractmethod
    def train_contexts(self) -> list[Context]: ...

    @abstractmethod
    def heldout_contexts(self) -> list[Context]: ...

    @abstractmethod
    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        """The no-context prompt a base student answers, e.g. ``"Q: Who ...? A:"`` (the context is never
        shown: a task may use its title, as SEAL's SQuAD prompt does). Chat students get :meth:`qa_messages`
        through their chat template instead (:mod:`student.prompting`)."""

    @abstractmethod
    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        """The inner-loop training sequences of an edit (raise ValueError for an edit the task refuses)."""

    # ---- optional hooks, with their defaults
    def qa_messages(self, question: str, context: Context | None = None) -> list[dict[str, str]]:
        """The chat turns a chat student is asked (default: the question as one user turn)."""
        return [{"role": "user", "content": question}]

    def passage_item(self, context: Context) -> TrainingItem | None:
        """The training sequence of the passage itself (the ``passage`` source); None: the passage text as
        one sequence (SQuAD: the passage under its title, as SEAL trains it)."""
        return None

    def training_items_for(
        self, edit_text: str, context: Context, adapt: Any, seed: int
    ) -> tuple[list[TrainingItem], Any] | None:
        """Items *and* inner-loop settings for an edit, when the edit chooses them (ARC: the teacher's
        directive sets learning rate and epochs); raise ValueError for an unusable edit. None (the default):
        :meth:`training_items` with the student's own ``adapt``. A task that overrides it is adapted one
        edit at a time."""
        return None

    def score(
        self, model: Any, tok: Any, context: Context, max_new_tokens: int, batch_size: int
    ) -> StudentScore | None:
        """A student's score on ``context`` when the task scores its own way (ARC: exact grid match); None
        (the default): greedy no-context answers and gold log-probs (:mod:`student.scoring`). A task that
        overrides it is adapted and scored one edit at a time."""
        return None

    def validate_edit(self, edit_text: str) -> str | None:
        """Why an edit is unusable before any student trains on it (rewarded with ``reward.penalty``), or
        None (the default: any non-empty edit is tried)."""
        return None

    def classify_edit(self, edit_text: str) -> str | None:
        """The edit's style for the round report's counts (e.g. ``qa`` / ``facts``), or None (not counted)."""
        return None

    def reference_edits(self, context: Context, seed: int = 0) -> dict[str, str]:
        """Hand-written edits of several styles, the yardstick of ``teachedit styles``; empty when the task
        has none (the default)."""
        return {}

    def student_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, completion) texts to pretrain a tiny student (never the train or held-out contexts)."""
        raise NotImplementedError(
            f"task {self.name!r} has no pretraining corpus: give its students a model.path"
        )

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """(context, edit) pairs to pretrain a tiny teacher (never the train or held-out contexts)."""
        raise NotImplementedError(
            f"task {self.name!r} has no pretraining corpus: give its teacher a model.path"
        )


def overrides(task: Task, hook: str) -> bool:
    """Whether ``task`` replaces the default of ``hook`` (a per-edit hook that rules out batching)."""
    return getattr(type(task), hook, None) is not getattr(Task, hook)


def split_edit(edit_text: str) -> list[str]:
    """Split an edit into facts: one per non-empty line, list markers and markdown headers stripped."""
    facts = []
    for line in edit_text.splitlines():
        line = _BULLET.sub("", line.strip()).strip()
        bare = line.strip("*# ")
        if not bare or (bare.endswith(":") and len(bare.split()) <= 4):
            continue  # headers like "**Implications:**"
        facts.append(line)
    return facts


def qa_training_items(
    edit_text: str, context: Context, include_context: bool, qa_prompt: str = "Q: {q} A:"
) -> list[TrainingItem]:
    """SEAL's recipe: each line of the edit is a training sequence; QA lines become prompt/answer pairs."""
    items: list[TrainingItem] = []
    if include_context:
        items.append(TrainingItem(prompt="", completion=context.text))
    for fact in split_edit(edit_text):
        m = _QA_LINE.match(fact)
        if m:
            items.append(
                TrainingItem(prompt=qa_prompt.format(q=m["q"]), completion=" " + m["a"], question=m["q"])
            )
        else:
            items.append(TrainingItem(prompt="", completion=fact))
    return items
