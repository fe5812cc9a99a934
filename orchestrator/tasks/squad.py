"""SQuAD knowledge incorporation (SEAL's main study): passages, no-context questions, SEAL-format JSON.

A SEAL-format file is a JSON list of ``{title, context, questions: [{question, answer}]}``; edit files add
``completions: [str]`` (and the ``prompt`` that produced them). Files are read with ``datasets``.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from orchestrator.records import Context, Question
from orchestrator.tasks.base import TrainingItem, qa_training_items

BUNDLED = "passages.json"


def bundled_path(name: str = BUNDLED) -> Path:
    """Path of a file of the bundled subset (see orchestrator/data/squad/README.md)."""
    return Path(str(resources.files("orchestrator") / "data" / "squad" / name))


class DataFormatError(ValueError):
    """A data file does not follow the SEAL format. The message names the file and what is missing."""


def load_seal_json(path: str | Path, need_completions: bool = False) -> list[dict]:
    """Read a SEAL-format JSON file with ``datasets`` and check its schema. Returns plain records."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}. Pass a SEAL-format JSON file (see README).")
    _check_json_list(path)
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:
        raise DataFormatError(f"{path}: not a JSON list of records ({type(exc).__name__}: {exc})") from None
    need = {"title", "context", "questions"} | ({"completions"} if need_completions else set())
    missing = need - set(ds.column_names)
    if missing:
        raise DataFormatError(f"{path}: records lack {sorted(missing)}; expected keys {sorted(need)}")
    records = ds.to_list()
    for i, r in enumerate(records):
        if not isinstance(r["context"], str) or not r["context"].strip():
            raise DataFormatError(f"{path}: record {i} has an empty context")
        for j, q in enumerate(r["questions"] or []):
            if not q or not str(q.get("answer") or "").strip():
                raise DataFormatError(f"{path}: record {i} question {j} has no answer")
    return records


def _check_json_list(path: Path) -> None:
    """Fail with the line and column of a syntax error, before ``datasets`` logs its own error and raises a
    generic ``DatasetGenerationError``."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc}); expected a JSON list of records") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataFormatError(f"{path}: expected a JSON list of {{title, context, questions}} records")


def to_context(record: dict, index: int, max_questions: int = 0) -> Context:
    qs = tuple(Question(str(q["question"]), str(q["answer"])) for q in record["questions"])
    if max_questions:
        qs = qs[:max_questions]
    return Context(
        id=f"squad-{index:05d}", text=record["context"], questions=qs, title=record.get("title") or ""
    )


class SquadTask:
    name = "squad"
    formats = ("implications", "rewrite", "self-qa")

    def __init__(
        self,
        path: str | None = None,
        num_train: int = 16,
        num_heldout: int = 16,
        seed: int = 0,
        max_questions: int = 0,
    ):
        self.path = Path(path) if path else bundled_path()
        records = load_seal_json(self.path)
        contexts = [to_context(r, i, max_questions) for i, r in enumerate(records) if r["questions"]]
        order = list(range(len(contexts)))
        random.Random(seed).shuffle(order)
        if num_train + num_heldout > len(contexts):
            raise ValueError(
                f"{self.path} has {len(contexts)} passages with questions; lower task.num_train_contexts "
                f"({num_train}) + task.num_heldout_contexts ({num_heldout})"
            )
        self._train = [contexts[i] for i in order[:num_train]]
        self._heldout = [contexts[i] for i in order[num_train : num_train + num_heldout]]
        self._rest = [contexts[i] for i in order[num_train + num_heldout :]]

    def train_contexts(self) -> list[Context]:
        return list(self._train)

    def heldout_contexts(self) -> list[Context]:
        return list(self._heldout)

    def qa_prompt(self, question: str) -> str:
        return f"Q: {question} A:"

    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        return qa_training_items(edit_text, context, include_context)

    def student_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Passages and QA of the passages used neither for training nor held out (tiny students only)."""
        rng = random.Random(seed)
        pool = self._rest or self._train
        out: list[tuple[str, str]] = []
        while len(out) < n:
            c = rng.choice(pool)
            if rng.random() < 0.3:
                out.append(("", c.text))
            else:
                q = rng.choice(c.questions)
                out.append((self.qa_prompt(q.question), " " + q.answer))
        return out

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """SEAL's Qwen2.5-7B train-split edits, to pretrain a tiny teacher (tiny configs only)."""
        records = load_seal_json(bundled_path("edits_qwen2.5-7b_train.json"), need_completions=True)
        pairs = [(to_context(r, i), c) for i, r in enumerate(records) for c in r["completions"]]
        rng = random.Random(seed)
        return [rng.choice(pairs) for _ in range(n)]
