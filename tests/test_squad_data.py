"""SQuAD data from JSONL and `datasets` sources with a column mapping, and several gold answers per question
scored as SQuAD's official script scores them (the best EM / F1 over the golds)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.config import ConfigError, load_config
from core.records import Context, Question
from orchestrator.tasks.squad import SquadTask, load_seal_json, normalize_records
from student.scoring import aggregate_score, exact_match, token_f1

from .conftest import CACHE, CONFIGS, ROOT

BUNDLED = ROOT / "orchestrator" / "data" / "squad" / "edits_qwen2.5-7b_train.json"

# SQuAD v1.1 rows as Hugging Face's `rajpurkar/squad` lays them out: one row per question, answers as
# {"text": [...], "answer_start": [...]} with several (sometimes repeated) gold answers
FLAT = [
    {"id": "1", "title": "Super_Bowl_50", "context": "Super Bowl 50 was an American football game. The Denver "
     "Broncos defeated the Carolina Panthers 24-10.", "question": "Which team won Super Bowl 50?",
     "answers": {"text": ["Denver Broncos", "Denver Broncos", "the Broncos"], "answer_start": [49, 49, 45]}},
    {"id": "2", "title": "Super_Bowl_50", "context": "Super Bowl 50 was an American football game. The Denver "
     "Broncos defeated the Carolina Panthers 24-10.", "question": "What was the score?",
     "answers": {"text": ["24-10"], "answer_start": [88]}},
    {"id": "3", "title": "Warsaw", "context": "Warsaw is the capital of Poland.", "question": "What is Warsaw?",
     "answers": {"text": ["the capital of Poland", "capital"], "answer_start": [10, 14]}},
]  # fmt: skip


def test_em_and_f1_take_the_best_over_gold_answers():
    # SQuAD's metric_max_over_ground_truths
    assert exact_match("The Broncos", ["Denver Broncos", "the Broncos"]) == 1.0
    assert exact_match("Broncos", ["Denver Broncos", "the Broncos"]) == 1.0  # articles dropped
    assert exact_match("Panthers", ["Denver Broncos", "the Broncos"]) == 0.0
    assert token_f1("Denver", ["Denver Broncos", "Broncos of Denver"]) == pytest.approx(2 / 3)
    assert token_f1("capital city", ["the capital of Poland", "capital"]) == pytest.approx(2 / 3)
    score = aggregate_score(
        ["the Broncos", "25-10"], [("Denver Broncos", "the Broncos"), ("24-10",)], [-1.0, -2.0]
    )
    assert (score.em, score.f1, score.logprob) == (0.5, 0.5, -1.5)


def test_jsonl_holds_the_same_records_as_json(tmp_path):
    records = json.loads(BUNDLED.read_text())
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    a, b = SquadTask(str(BUNDLED), 4, 4, seed=3), SquadTask(str(p), 4, 4, seed=3)
    assert a.train_contexts() == b.train_contexts() and a.heldout_contexts() == b.heldout_contexts()
    p.write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_seal_json(p)


def test_flat_rows_are_grouped_by_passage_with_every_gold_answer():
    recs = normalize_records(FLAT, {}, "test")
    assert [r["title"] for r in recs] == ["Super_Bowl_50", "Warsaw"]
    assert recs[0]["questions"] == [
        {"question": "Which team won Super Bowl 50?", "answer": "Denver Broncos",
         "answers": ["Denver Broncos", "the Broncos"]},
        {"question": "What was the score?", "answer": "24-10"},
    ]  # fmt: skip
    assert recs[1]["questions"][0]["answers"] == ["the capital of Poland", "capital"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "save_to_disk"])
def test_a_datasets_source_with_renamed_columns_becomes_the_task(tmp_path, fmt):
    import datasets

    renamed = [
        {"passage": r["context"], "article": r["title"], "query": r["question"], "golds": r["answers"]}
        for r in FLAT
    ]
    ds = datasets.Dataset.from_list(renamed)
    if fmt == "jsonl":
        source = tmp_path / "squad.jsonl"
        ds.to_json(str(source))
    elif fmt == "parquet":
        source = tmp_path / "squad.parquet"
        ds.to_parquet(str(source))
    else:
        source = tmp_path / "squad_disk"
        datasets.DatasetDict({"validation": ds}).save_to_disk(str(source))
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        [
            f"run.cache_dir={CACHE}", "task.name=squad", f"task.dataset={source}", "task.split=validation",
            "task.num_train_contexts=1", "task.num_heldout_contexts=1",
            "task.columns={context: passage, title: article, question: query, answers: golds.text}",
        ],
    )  # fmt: skip
    from orchestrator.preflight import check_task

    task = check_task(cfg)
    contexts = {c.title: c for c in task.train_contexts() + task.heldout_contexts()}
    assert set(contexts) == {"Super_Bowl_50", "Warsaw"}
    won = contexts["Super_Bowl_50"].questions[0]
    assert won == Question("Which team won Super Bowl 50?", "Denver Broncos", ("the Broncos",))
    assert contexts["Warsaw"].questions[0].golds == ("the capital of Poland", "capital")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.columns={context: nope}"], "no text column 'nope'"),
        (["task.columns={context: passage, question: query}"], "no answer in 'answer' or 'answers'"),
        (["task.columns={contexts: passage}"], "task.columns: unknown keys ['contexts']"),
        ([f"task.path={BUNDLED}"], "set task.path or task.dataset, not both"),
    ],
)
def test_a_source_that_does_not_map_is_refused_naming_the_field(tmp_path, overrides, message):
    import datasets

    source = tmp_path / "rows.jsonl"
    datasets.Dataset.from_list([{"passage": r["context"], "query": r["question"]} for r in FLAT]).to_json(
        str(source)
    )
    from orchestrator.preflight import check_task

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg = load_config(
            CONFIGS / "smoke.yaml",
            [f"run.cache_dir={CACHE}", "task.name=squad", f"task.dataset={source}", *overrides],
        )
        check_task(cfg)


def test_a_student_is_scored_against_every_gold_answer_on_both_paths(make_student, task):
    """The student's own greedy answer, listed as a second gold answer behind an unreachable first one, counts
    as exact: one edit at a time (Student.score) and in the batched loop (score_adapters) alike. The log-prob
    is of the reference (first) answer."""
    from student.batched import MultiLoRA, score_adapters
    from student.scoring import greedy_answers

    s = make_student("llama-t")
    base = task.heldout_contexts()[0]
    q = base.questions[0]
    prompt = s.qa_prompt(q.question, base)
    pred = greedy_answers(s.model, s.tok, [prompt], s.cfg.max_new_tokens, 1, add_special_tokens=not s.chat)[0]
    assert exact_match(pred, "zzz unreachable") == 0.0
    one = dataclasses.replace(base, questions=(Question(q.question, "zzz unreachable"),))
    two = dataclasses.replace(base, questions=(Question(q.question, "zzz unreachable", (pred,)),))
    assert s.score(one).em == 0.0 and s.score(two).em == 1.0 and s.score(two).f1 == 1.0
    assert s.score(two).logprob == pytest.approx(s.score(one).logprob)
    with MultiLoRA(s, [1, 2]) as ml:
        scores = score_adapters(ml, [one, two], [0, 1])
    assert scores[0].em == 0.0 and scores[1].em == 1.0


def test_context_records_keep_every_gold_answer():
    from orchestrator.protocols.data import seal_records

    c = Context("c", "text", (Question("q?", "a", ("b",)), Question("r?", "x")), "T")
    rec = seal_records([c], {}, {})[0]
    assert rec["questions"] == [
        {"question": "q?", "answer": "a", "answers": ["a", "b"]},
        {"question": "r?", "answer": "x"},
    ]
    recs = normalize_records([rec], {}, "roundtrip")
    assert recs[0]["questions"][0]["answers"] == ["a", "b"]
