"""A synthetic knowledge-incorporation task that tiny models learn from on a CPU.

The world: people with nonce names (three syllables, so every name is several tokens for every tokenizer),
each with four attributes (coat colour, town, food, trade) drawn from ten values each. A *passage*
describes one person in narrative sentences, in random order, with distractor sentences. The held-out
*questions* ask for each attribute in the student's QA format.

Why edits matter here, for honest reasons: tiny students are pretrained (on people they will never be
tested on) to read passages and to answer questions, but like real models they do not turn a narrative
sentence into an answer after a few LoRA steps on it (the "reversal"/format gap). An edit that restates the
passage as question–answer pairs closes that gap; a plain rewrite does not. The tiny teacher is pretrained
on a *uniform mix* of edit styles (QA in two wordings, partial QA, fact statements, rewrites), so the
initial teacher writes all of them; ReST-EM must discover from rewards alone which style students learn
from. Entities in the teacher's and the students' pretraining, the training contexts and the held-out
contexts are four disjoint sets of names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.records import Context, Question
from core.task import Task, TrainingItem, qa_training_items

SYLLABLES = ["ka", "lo", "mi", "ru", "ze", "ta", "po", "ne", "vi", "su",
             "da", "fe", "go", "hu", "ji", "bo", "ri", "sa", "tu", "me"]  # fmt: skip

VALUES: dict[str, list[str]] = {
    "colour": ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink"],
    "town": [
        "dunmore",
        "ashford",
        "kelby",
        "marlow",
        "tornby",
        "wexley",
        "halden",
        "brisk",
        "oakham",
        "pellow",
    ],
    "food": ["figs", "plums", "bread", "rice", "beans", "soup", "pears", "cheese", "olives", "honey"],
    "trade": [
        "baker",
        "farmer",
        "sailor",
        "painter",
        "doctor",
        "miner",
        "tailor",
        "singer",
        "hunter",
        "weaver",
    ],
}

# Narrative sentences (what passages say).
NARRATIVE: dict[str, list[str]] = {
    "colour": ["{n} always wears a {v} coat.", "The coat that {n} wears is {v}."],
    "town": ["{n} lives in the town of {v}.", "{n} has a small house in {v}."],
    "food": ["For dinner {n} eats {v}.", "{n} loves to eat {v}."],
    "trade": ["{n} works as a {v}.", "By trade {n} is a {v}."],
}
DISTRACTORS = [
    "The weather was mild that year.", "Nobody remembers when the road was built.",
    "The river floods every spring.", "Most evenings are quiet there.",
    "Old stories are told by the fire.", "The market opens at dawn.",
]  # fmt: skip

# The held-out question wording (what students are tested on) ...
QUESTIONS: dict[str, str] = {
    "colour": "What colour is the coat of {n}?",
    "town": "Where does {n} live?",
    "food": "What does {n} eat?",
    "trade": "What is the trade of {n}?",
}
# ... and another wording of the same questions, which transfers less.
ALT_QUESTIONS: dict[str, str] = {
    "colour": "Which coat colour does {n} have?",
    "town": "In which town is the house of {n}?",
    "food": "Which food does {n} like?",
    "trade": "How does {n} earn a living?",
}
STATEMENTS: dict[str, str] = {
    "colour": "The colour of the coat of {n} is {v}.",
    "town": "The town of {n} is {v}.",
    "food": "The food of {n} is {v}.",
    "trade": "The trade of {n} is {v}.",
}
EDIT_STYLES = ("qa", "qa_alt", "qa_partial", "statements", "rewrite")


@dataclass(frozen=True)
class Person:
    name: str
    attrs: dict[str, str]


def _all_names(seed: int) -> list[str]:
    names = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES if not a == b == c]
    random.Random(seed).shuffle(names)
    return names


def _person(name: str, rng: random.Random) -> Person:
    return Person(name, {k: rng.choice(v) for k, v in VALUES.items()})


def passage(p: Person, rng: random.Random) -> str:
    sents = [rng.choice(NARRATIVE[k]).format(n=p.name, v=v) for k, v in p.attrs.items()]
    rng.shuffle(sents)
    for d in rng.sample(DISTRACTORS, 2):
        sents.insert(rng.randrange(len(sents) + 1), d)
    return " ".join(sents)


def edit_in_style(p: Person, style: str, rng: random.Random) -> str:
    """An edit of the given style for a person (used only to pretrain the tiny teacher, uniformly)."""
    keys = list(p.attrs)
    rng.shuffle(keys)
    if style == "qa":
        return "\n".join(f"Q: {QUESTIONS[k].format(n=p.name)} A: {p.attrs[k]}" for k in keys)
    if style == "qa_alt":
        return "\n".join(f"Q: {ALT_QUESTIONS[k].format(n=p.name)} A: {p.attrs[k]}" for k in keys)
    if style == "qa_partial":
        return "\n".join(
            f"Q: {QUESTIONS[k].format(n=p.name)} A: {p.attrs[k]}" for k in keys[: rng.randint(1, 2)]
        )
    if style == "statements":
        return "\n".join(STATEMENTS[k].format(n=p.name, v=p.attrs[k]) for k in keys)
    if style == "rewrite":
        return "\n".join(rng.choice(NARRATIVE[k]).format(n=p.name, v=p.attrs[k]) for k in keys)
    raise ValueError(f"unknown edit style {style!r}; choose from {EDIT_STYLES}")


def classify_edit(text: str) -> str:
    """The style an edit is written in (for reports: how the teacher's mix of styles shifts)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "empty"
    qa = [ln for ln in lines if ln.lstrip().startswith("Q:")]
    if len(qa) == len(lines):
        alt = any(any(w in ln for w in ("Which", "In which", "How does")) for ln in qa)
        return "qa_alt" if alt else ("qa" if len(qa) >= 4 else "qa_partial")
    if all(ln.startswith("The ") and " of " in ln and " is " in ln for ln in lines):
        return "statements"
    return "rewrite"


class SyntheticTask(Task):
    """People and their attributes; see the module docstring."""

    name = "synthetic"
    formats = ("notes",)

    def __init__(self, num_train: int = 16, num_heldout: int = 16, seed: int = 0, max_questions: int = 0):
        self.seed = seed
        self.max_questions = max_questions
        # Four disjoint name sets: teacher pretraining, student pretraining, training contexts, held out.
        # The pretraining sets do not depend on the seed, so tiny models are built once for all seeds.
        names = _all_names(0)
        n_pre = 3000
        self._teacher_names = names[:n_pre]
        self._student_names = names[n_pre : 2 * n_pre]
        rest = names[2 * n_pre :]
        rng = random.Random(seed)
        rng.shuffle(rest)
        self._train = [
            self._context("train", i, _person(n, rng), rng) for i, n in enumerate(rest[:num_train])
        ]
        held = rest[num_train : num_train + num_heldout]
        self._heldout = [self._context("heldout", i, _person(n, rng), rng) for i, n in enumerate(held)]

    def _context(self, split: str, i: int, p: Person, rng: random.Random) -> Context:
        qs = tuple(Question(QUESTIONS[k].format(n=p.name), v) for k, v in p.attrs.items())
        if self.max_questions:
            qs = qs[: self.max_questions]
        return Context(id=f"{split}-{i:04d}-{p.name}", text=passage(p, rng), questions=qs, title=p.name)

    classify_edit = staticmethod(classify_edit)

    def reference_edits(self, context: Context, seed: int = 0) -> dict[str, str]:
        """One edit per style written from the task's own knowledge, plus the raw passage: a diagnostic of
        how much each style is worth to the students (never shown to the teacher)."""
        person = Person(context.title, {k: q.answer for k, q in zip(QUESTIONS, context.questions)})
        rng = random.Random(seed)
        return {"passage": context.text} | {s: edit_in_style(person, s, rng) for s in EDIT_STYLES}

    def train_contexts(self) -> list[Context]:
        return list(self._train)

    def heldout_contexts(self) -> list[Context]:
        return list(self._heldout)

    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        return f"Q: {question} A:"

    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        return qa_training_items(edit_text, context, include_context)

    def student_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Passages, statements and QA in both wordings about the student-pretraining people."""
        rng = random.Random(seed)
        out: list[tuple[str, str]] = []
        people = [_person(name, rng) for name in self._student_names]
        while len(out) < n:
            p = rng.choice(people)
            kind = rng.random()
            if kind < 0.25:
                out.append(("", passage(p, rng)))
            elif kind < 0.35:
                out.append(("", edit_in_style(p, rng.choice(["statements", "rewrite"]), rng)))
            else:
                k = rng.choice(list(p.attrs))
                q = (QUESTIONS if rng.random() < 0.7 else ALT_QUESTIONS)[k].format(n=p.name)
                out.append((self.qa_prompt(q), " " + p.attrs[k]))
        return out

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """(context, edit) pairs with edit styles drawn uniformly: the initial teacher's mix."""
        rng = random.Random(seed)
        out: list[tuple[Context, str]] = []
        for i in range(n):
            p = _person(self._teacher_names[i % len(self._teacher_names)], rng)
            ctx = Context(id=f"pre-{i}", text=passage(p, rng), questions=(), title=p.name)
            out.append((ctx, edit_in_style(p, rng.choice(EDIT_STYLES), rng)))
        return out
