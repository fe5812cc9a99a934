"""SQuAD knowledge incorporation (SEAL's main study): passages, no-context questions, SEAL-format JSON.

A SEAL-format file is a JSON list of ``{title, context, questions: [{question, answer}]}``; edit files add
``completions: [str]`` (and the ``prompt`` that produced them). Files are read with ``datasets``.

``protocol="seal"`` (the default) follows SEAL's knowledge-incorporation code (Continual-Intelligence/SEAL,
``knowledge-incorporation/src/utils.py`` and ``src/query/query_server.py``, as run by its
``scripts/query_server.sh`` with ``SPLIT_NEWLINES=true``):

- training sequences as its ``build_train_sequences(..., split_newlines=True)``: the edit is cut at ``---``;
  a self-QA edit (``Question N:`` and ``Answer:`` in it) is cut before every ``Question N:`` line (the first
  piece gets ``Question 1: `` if it lacks it, since SEAL's self-qa prompt ends in ``Question 1: ``); any other
  edit becomes one sequence per non-empty line, and a first line like "Sure, here are implications:" is
  dropped when the second starts with ``1.``; the passage is always appended as the last sequence; every
  sequence is ``"{title}\n{text}"``; the loss is on every token (SEAL masks nothing by default);
- the no-context question is ``"Topic: {title}\n{question}"`` inside SEAL's base answering template
  (:data:`SEAL_QA_TEMPLATE`), or, for chat students, SEAL's instruct system prompt and that question as the
  user turn, through the student's own chat template.

Where teachedit differs (each is named in ``configs/real_cpu.yaml``): SEAL pads every sequence to
``max_seq_length`` and trains on the padding too (its pad token is Qwen's ``<|endoftext|>``); here each
sequence gets one EOS and padding is masked. ``protocol="qa_lines"`` is teachedit's earlier recipe: one
sequence per line, ``Q: ... A: ...`` lines trained as prompt and answer, the passage only with
``adapt.include_context``.
"""

from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

from core.config import COLUMN_KEYS
from core.records import Context, Question
from core.task import Task, TrainingItem, qa_training_items

BUNDLED = "passages.json"

# SEAL's base-model answering template (utils.SQUAD_ANSWER_TEMPLATE_BASE) and its instruct system prompt
# (utils.SQUAD_ANSWER_TEMPLATE_QWEN_INSTRUCT, there written out in Qwen's chat format).
SEAL_QA_TEMPLATE = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"
SEAL_QA_SYSTEM = "You are an assistant to answer a question directly and concisely."
SEAL_SEQUENCE_TEMPLATE = "{title}\n{text}"
PROTOCOLS = ("seal", "qa_lines")
_SELF_QA_MARK = re.compile(r"Question\s+\d+:")
_ANSWER_MARK = re.compile(r"Answer\s*:")
_NEXT_QUESTION = re.compile(r"\n(?=Question\s+\d+:)")


def seal_question(question: str, title: str) -> str:
    """The question as SEAL asks it: ``"Topic: {title}\n{question}"``."""
    return f"Topic: {title}\n{question}"


def seal_segments(edit_text: str) -> list[str]:
    """The pieces one edit is cut into, as SEAL's ``build_train_sequences`` with ``split_newlines=True``."""
    pieces = [p.strip() for p in edit_text.split("---") if p.strip()] or [edit_text.strip()]
    if _SELF_QA_MARK.search(edit_text) and _ANSWER_MARK.search(edit_text):
        pieces = _NEXT_QUESTION.split(edit_text.strip())
        if not pieces[0].lstrip().startswith("Question"):
            pieces[0] = "Question 1: " + pieces[0].strip()
        return pieces
    lines = [line.strip() for piece in pieces for line in piece.splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("1."):
        lines = lines[1:]
    return lines


def seal_train_sequences(edit_text: str, context: str, title: str) -> list[str]:
    """SEAL's inner-loop training documents of an edit: its segments, then the passage, each under the
    title."""
    texts = [*seal_segments(edit_text), context.strip()]
    return [SEAL_SEQUENCE_TEMPLATE.format(title=title, text=t) for t in texts]


def bundled_path(name: str = BUNDLED) -> Path:
    """Path of a file of the bundled subset (see orchestrator/data/squad/README.md)."""
    return Path(str(resources.files("orchestrator") / "data" / "squad" / name))


class DataFormatError(ValueError):
    """A data file does not follow the SEAL format. The message names the file and what is missing."""


def load_seal_json(path: str | Path, need_completions: bool = False) -> list[dict]:
    """Read a SEAL-format JSON file (a list of records) or JSONL file (one record per line) with ``datasets``
    and check its schema. Returns plain records; a question's ``answers`` list (several gold answers), when
    present, is kept beside ``answer``."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}. Pass a SEAL-format JSON file (see README).")
    if path.suffix == ".jsonl":
        records = _read_jsonl(path)
        need = {"title", "context", "questions"} | ({"completions"} if need_completions else set())
        for i, r in enumerate(records):
            missing = need - set(r)
            if missing:
                raise DataFormatError(
                    f"{path}: line {i + 1} lacks {sorted(missing)}; expected keys {sorted(need)}"
                )
        return _checked(path, normalize_records(records, {}, str(path)), need_completions)
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
    for r in records:
        for q in r["questions"] or []:
            if isinstance(q, dict) and q.get("answers") is None:
                q.pop("answers", None)  # datasets fills a column that only some questions have with None
    return _checked(path, records, need_completions)


def _checked(where: str | Path, records: list[dict], need_completions: bool = False) -> list[dict]:
    for i, r in enumerate(records):
        if not isinstance(r["context"], str) or not r["context"].strip():
            raise DataFormatError(f"{where}: record {i} has an empty context")
        for j, q in enumerate(r["questions"] or []):
            if not q or not golds_of(q, "answer", "answers"):
                raise DataFormatError(f"{where}: record {i} question {j} has no answer")
    return records


def _read_jsonl(path: Path) -> list[dict]:
    import json

    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}: line {n} is not valid JSON ({exc})") from None
            if not isinstance(r, dict):
                raise DataFormatError(f"{path}: line {n} is not a JSON object")
            records.append(r)
    if not records:
        raise DataFormatError(f"{path}: no records")
    return records


def _get(row: dict, name: str) -> Any:
    """``row[name]``, where a dotted name reaches into nested mappings (``answers.text``)."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def golds_of(q: dict, answer: str, answers: str) -> list[str]:
    """A question's gold answers, reference first: ``answer`` (a string), then ``answers`` (a list of strings,
    one string, or SQuAD's ``{"text": [...], "answer_start": [...]}``), without empty strings or repeats."""
    found: list[str] = []
    for value in (_get(q, answer), _get(q, answers)):
        if isinstance(value, dict):
            value = value.get("text")
        if isinstance(value, str):
            value = [value]
        for a in value or []:
            a = str(a).strip()
            if a and a not in found:
                found.append(a)
    return found


def normalize_records(rows: list[dict], columns: dict[str, str], where: str) -> list[dict]:
    """Turn rows of any layout into SEAL records ``{title, context, questions: [{question, answer[, answers]}]}``.

    Two layouts, named through ``columns`` (teachedit's name -> the data's; unmapped names are read as is):
    *nested*, one row per passage with a ``questions`` list (SEAL's files), or *flat*, one row per question
    with ``question`` and ``answer`` / ``answers`` columns (Hugging Face's ``squad``), grouped into passages by
    their context text in order of first appearance. ``answers`` may hold several gold answers."""
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise DataFormatError(f"task.columns: unknown keys {unknown}; map any of {list(COLUMN_KEYS)}")
    col = {k: columns.get(k, k) for k in COLUMN_KEYS}
    if not rows:
        raise DataFormatError(f"{where}: no rows")
    first = rows[0]
    if not isinstance(_get(first, col["context"]), str):
        raise DataFormatError(
            f"{where}: no text column '{col['context']}' (columns: {sorted(first)}); map it with "
            f"task.columns.context=<column>"
        )
    nested = isinstance(_get(first, col["questions"]), list)
    if not nested and _get(first, col["question"]) is None:
        raise DataFormatError(
            f"{where}: neither a '{col['questions']}' list nor a '{col['question']}' column (columns: "
            f"{sorted(first)}); map one with task.columns.questions=<column> or task.columns.question=<column>"
        )
    out: dict[str, dict] = {}
    for i, row in enumerate(rows):
        context = _get(row, col["context"])
        if not isinstance(context, str):
            raise DataFormatError(f"{where}: row {i} has no text in '{col['context']}'")
        rec = out.setdefault(
            context, {"title": str(_get(row, col["title"]) or ""), "context": context, "questions": []}
        )
        for q in _get(row, col["questions"]) or [] if nested else [row]:
            if not isinstance(q, dict):
                raise DataFormatError(
                    f"{where}: row {i}: a question must be an object, got {type(q).__name__}"
                )
            golds = golds_of(q, col["answer"], col["answers"])
            if not golds:
                raise DataFormatError(
                    f"{where}: row {i}: a question has no answer in '{col['answer']}' or '{col['answers']}'"
                )
            question = {"question": str(_get(q, col["question"]) or ""), "answer": golds[0]}
            if len(golds) > 1:
                question["answers"] = golds
            rec["questions"].append(question)
        for key in ("completions", "prompt"):
            if key in row and key not in rec:
                rec[key] = row[key]
    return list(out.values())


def load_dataset_records(source: str, config: str | None, split: str, columns: dict[str, str]) -> list[dict]:
    """Rows of a ``datasets`` source as SEAL records (:func:`normalize_records`): a data file (``.json``,
    ``.jsonl``, ``.csv``, ``.parquet``), a folder written by ``Dataset.save_to_disk``, or a hub dataset id
    (``rajpurkar/squad``; needs the network or the datasets cache)."""
    import datasets

    where = f"task.dataset={source}"
    path = Path(source)
    builders = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    try:
        if path.is_file():
            if path.suffix not in builders:
                raise DataFormatError(f"{where}: a data file must end in {sorted(builders)}")
            ds = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").is_file():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataFormatError(f"{where}: no split '{split}' (has {sorted(ds)}); set task.split")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(source, config, split=split)
    except DataFormatError:
        raise
    except Exception as exc:
        raise DataFormatError(
            f"{where}: cannot load it with datasets ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
            "give a .json/.jsonl/.csv/.parquet file, a save_to_disk folder, or a hub id (online, or cached)"
        ) from None
    return _checked(where, normalize_records(ds.to_list(), columns, where))


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
    qs = tuple(
        Question(str(q["question"]), golds[0], tuple(golds[1:]))
        for q in record["questions"]
        for golds in [golds_of(q, "answer", "answers")]
    )
    if max_questions:
        qs = qs[:max_questions]
    return Context(
        id=f"squad-{index:05d}", text=record["context"], questions=qs, title=record.get("title") or ""
    )


class SquadTask(Task):
    name = "squad"
    formats = ("implications", "implications-long", "implications-very-long", "rewrite", "self-qa")

    def __init__(
        self,
        path: str | None = None,
        num_train: int = 16,
        num_heldout: int = 16,
        seed: int = 0,
        max_questions: int = 0,
        protocol: str = "seal",
        dataset: str | None = None,
        dataset_config: str | None = None,
        split: str = "train",
        columns: dict[str, str] | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown squad protocol {protocol!r}; choose from {PROTOCOLS}")
        self.protocol = protocol
        if dataset:
            self.path = Path(dataset)
            records = load_dataset_records(dataset, dataset_config, split, dict(columns or {}))
        else:
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

    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        if self.protocol == "qa_lines":
            return f"Q: {question} A:"
        return SEAL_QA_TEMPLATE.format(question=seal_question(question, context.title if context else ""))

    def qa_messages(self, question: str, context: Context | None = None) -> list[dict[str, str]]:
        """The question for a chat student: SEAL's instruct system prompt, the question as the user turn."""
        if self.protocol == "qa_lines":
            return [{"role": "user", "content": question}]
        title = context.title if context else ""
        return [
            {"role": "system", "content": SEAL_QA_SYSTEM},
            {"role": "user", "content": seal_question(question, title)},
        ]

    def passage_item(self, context: Context) -> TrainingItem:
        """The 'passage' source's one training sequence: SEAL's passage sequence (under the title)."""
        if self.protocol == "qa_lines":
            return TrainingItem(prompt="", completion=context.text)
        return TrainingItem(prompt="", completion=seal_train_sequences("", context.text, context.title)[-1])

    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        """The edit's inner-loop sequences. Under the SEAL protocol the passage is always appended
        (``include_context`` is ignored: SEAL's ``build_train_sequences`` always appends it)."""
        if self.protocol == "qa_lines":
            return qa_training_items(edit_text, context, include_context)
        if not edit_text.strip():
            return []  # an empty edit is unusable (recorded), not "the passage alone"
        return [
            TrainingItem(prompt="", completion=t)
            for t in seal_train_sequences(edit_text, context.text, context.title)
        ]

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
                prompt = self.qa_prompt(q.question, c)
                out.append((prompt, (" " if not prompt[-1:].isspace() else "") + q.answer))
        return out

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """SEAL's Qwen2.5-7B train-split edits, to pretrain a tiny teacher (tiny configs only)."""
        records = load_seal_json(bundled_path("edits_qwen2.5-7b_train.json"), need_completions=True)
        pairs = [(to_context(r, i), c) for i, r in enumerate(records) for c in r["completions"]]
        rng = random.Random(seed)
        return [rng.choice(pairs) for _ in range(n)]
