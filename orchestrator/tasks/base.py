"""The task interface: contexts, held-out questions, how an edit becomes training sequences, how to ask."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from orchestrator.records import Context

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


class Task(Protocol):
    """What the loop needs from a task. Implementations: :mod:`synthetic`, :mod:`squad`."""

    name: str

    def train_contexts(self) -> list[Context]: ...

    def heldout_contexts(self) -> list[Context]: ...

    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        """The no-context prompt a base student answers, e.g. ``"Q: Who ...? A:"`` (the context is never
        shown: a task may use its title, as SEAL's SQuAD prompt does). Chat students get
        ``qa_messages`` (optional hook) through their chat template instead (:mod:`student.prompting`)."""
        ...

    def training_items(
        self, edit_text: str, context: Context, include_context: bool
    ) -> list[TrainingItem]: ...

    def student_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, completion) texts to pretrain a tiny student (never the train or held-out contexts)."""
        ...

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """(context, edit) pairs to pretrain a tiny teacher (never the train or held-out contexts)."""
        ...


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
