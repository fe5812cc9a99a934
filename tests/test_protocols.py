"""SEAL's SQuAD protocols end to end on tiny models: `teachedit eval` with every source kind and a judge,
multi-passage CPT, continual edits with a forgetting matrix; plus the pieces (matching, averaging, judge)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from core.config import JudgeConfig, load_config, to_yaml
from orchestrator.cli import main
from orchestrator.protocols.common import Answer, BaseAnswers, Settings, UpdateResult, update_items
from orchestrator.protocols.continual import forgetting_matrix, run_continual
from orchestrator.protocols.cpt import run_cpt
from orchestrator.protocols.data import DataFormatError, Source, load_eval_data
from orchestrator.protocols.table import summarize
from student.judge import Judge, judge_accuracy

from .conftest import CACHE, CONFIGS, ROOT

SQUAD = ROOT / "orchestrator" / "data" / "squad"
PASSAGES = SQUAD / "passages.json"
TRAIN = SQUAD / "edits_qwen2.5-7b_train.json"


def _shrink(i: int) -> list[str]:
    p = f"students.{i}"
    return [
        f"{p}.model.tiny.hidden_size=32",
        f"{p}.model.tiny.vocab_size=400",
        f"{p}.model.tiny.max_position=256",
        f"{p}.model.tiny.pretrain_steps=10",
        f"{p}.adapt.epochs=2",
        f"{p}.adapt.max_length=256",
        f"{p}.adapt.learning_rate=1.0e-2",
    ]


# configs/squad_tiny.yaml at test size: small models, a few pretraining steps, 2 edits per passage.
TEST_OVERRIDES = [
    f"run.cache_dir={CACHE}",
    "run.progress=false",
    f"task.path={TRAIN}",
    "teacher.model.tiny.hidden_size=32",
    "teacher.model.tiny.vocab_size=400",
    "teacher.model.tiny.pretrain_steps=5",
    "teacher.generation.num_edits=2",
    "teacher.generation.max_new_tokens=24",
    *_shrink(0),
    *_shrink(1),
]


@pytest.fixture(scope="module")
def squad_cfg():
    return load_config(CONFIGS / "squad_tiny.yaml", TEST_OVERRIDES)


def _write_cfg(cfg, path: Path, students: int = 2, judge: bool = False, method: str = "lora") -> Path:
    cfg = copy.deepcopy(cfg)
    cfg.students = cfg.students[:students]
    for s in cfg.students:
        s.adapt.method = method
    if judge:  # the first student's tiny model doubles as the judge (already built: no extra cost)
        cfg.judge = JudgeConfig(model=copy.deepcopy(cfg.students[0].model), batch_size=8)
    path.write_text(to_yaml(cfg))
    return path


@pytest.fixture(scope="module")
def squad_task(squad_cfg):
    from orchestrator.tasks import build_task

    return build_task(squad_cfg.task)


@pytest.fixture(scope="module")
def contexts():
    return load_eval_data(PASSAGES, [], limit=3)[0]


def _edits_file(path: Path, n: int = 2, extra: tuple[str, ...] = ("",)) -> Path:
    """The first n GPT-4.1 records, 2 completions each plus ``extra`` (an empty one fails, with a reason)."""
    records = json.loads((SQUAD / "edits_gpt4_1.json").read_text())[:n]
    for r in records:
        r["completions"] = r["completions"][:2] + list(extra)
        r["context"] = "  " + r["context"] + "\n"  # matched by text with whitespace collapsed
    path.write_text(json.dumps(records))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_cli_every_source_kind_with_judge(squad_cfg, squad_task, contexts, tmp_path, capsys):
    cfg_path = _write_cfg(squad_cfg, tmp_path / "c.yaml", judge=True)
    edits = _edits_file(tmp_path / "small_edits.json")
    args = ["eval", str(cfg_path), f"run.output_dir={tmp_path}", "--data", str(PASSAGES)]
    rc = main([*args, "--edits", str(edits), "--limit", "2", "--name", "ev"])
    assert rc == 0
    assert "| source | student |" in capsys.readouterr().out
    out = tmp_path / "ev"
    rows = json.loads((out / "eval.json").read_text())["rows"]
    n_q = sum(len(c.questions) for c in contexts[:2])
    assert [(r["source"], r["student"]) for r in rows] == [
        (s, st) for s in ("base", "passage", "teacher", "small_edits") for st in ("llama-s", "gpt2-s")
    ]
    for r in rows:
        assert {"source", "student", "em", "f1", "gold_logprob", "n_questions"} <= set(r)
        assert r["n_questions"] == n_q and 0.0 <= r["judge"] <= 1.0
    by = {(r["source"], r["student"]): r for r in rows}
    # updates: base none; passage 1 per passage; teacher k=2 per passage; file 3 per passage (1 empty: failed)
    assert [by[(s, "gpt2-s")]["n_updates"] for s in ("base", "passage", "teacher", "small_edits")] == [
        0,
        2,
        4,
        6,
    ]
    assert by[("small_edits", "llama-s")]["n_failed"] == 2 and by[("passage", "llama-s")]["n_failed"] == 0
    # The base row is the untouched student's score, computed here independently.
    from core.records import StudentScore
    from orchestrator.protocols.evaluate import load_student

    student = load_student(load_config(cfg_path), 0, squad_task, torch.device("cpu"))
    ref = StudentScore.mean([student.score(c) for c in contexts[:2]])
    base = by[("base", "llama-s")]
    assert base["em"] == pytest.approx(ref.em) and base["f1"] == pytest.approx(ref.f1)
    assert base["gold_logprob"] == pytest.approx(ref.logprob, abs=1e-5)
    assert by[("passage", "llama-s")]["gold_logprob"] != pytest.approx(base["gold_logprob"], abs=1e-4)
    # Every update was recorded as it completed; the judge column is the fraction of "yes" verdicts.
    updates = _jsonl(out / "updates.jsonl")
    assert len(updates) == 2 * (2 + 2 + 4 + 6)
    failed = [u for u in updates if u["error"]]
    assert len(failed) == 4 and all("no usable text" in u["error"] for u in failed)
    verdict = {(v["question"], v["gold"], v["prediction"]): v["correct"] for v in _jsonl(out / "judge.jsonl")}
    base_answers = [
        a for u in updates if (u["source"], u["student"]) == ("base", "llama-s") for a in u["answers"]
    ]
    expect = sum(verdict[(a["question"], a["gold"], a["prediction"])] for a in base_answers) / n_q
    assert base["judge"] == pytest.approx(expect)
    assert (out / "eval.md").read_text().count("\n| ") == 1 + len(rows)
    teacher_edits = json.loads((out / "teacher_edits.json").read_text())
    assert [len(r["completions"]) for r in teacher_edits] == [2, 2]


def test_eval_cli_cpt_one_update_on_several_passages(squad_cfg, tmp_path):
    cfg_path = _write_cfg(squad_cfg, tmp_path / "c.yaml", students=1)
    args = ["eval", str(cfg_path), f"run.output_dir={tmp_path}", "--data", str(PASSAGES), "--name", "cpt"]
    assert main([*args, "--limit", "3", "--protocol", "cpt", "--n", "2", "--sources", "base,passage"]) == 0
    updates = _jsonl(tmp_path / "cpt" / "updates.jsonl")
    passage = [u for u in updates if u["source"] == "passage"]
    assert [len(u["context_ids"]) for u in passage] == [2, 1]  # groups of n=2: one update per group
    assert [u["n_items"] for u in passage] == [2, 1]
    assert {a["context_id"] for a in passage[0]["answers"]} == set(passage[0]["context_ids"])
    rows = json.loads((tmp_path / "cpt" / "eval.json").read_text())["rows"]
    assert [r["n_updates"] for r in rows] == [0, 2]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_cpt_updates_from_the_base_and_restores_it(squad_cfg, squad_task, contexts, method):
    from orchestrator.protocols.evaluate import load_student

    cfg = copy.deepcopy(squad_cfg)
    cfg.students[0].adapt.method = method
    student = load_student(cfg, 0, squad_task, torch.device("cpu"))
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    base = BaseAnswers()
    results = run_cpt(student, Source("passage", "passage"), contexts, Settings(n=3), base)
    assert len(results) == 1 and results[0].error is None and results[0].train_loss is not None
    after = student.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    lp = [a.logprob for a in results[0].answers]
    assert len(lp) == sum(len(c.questions) for c in contexts)
    assert lp != [a.logprob for a in base.get(student, contexts)], "the update changed the answers' log-probs"


def test_eval_cli_continual_writes_matrix_and_heatmap(squad_cfg, tmp_path):
    cfg_path = _write_cfg(squad_cfg, tmp_path / "c.yaml", students=1)
    edits = _edits_file(tmp_path / "e.json", n=3, extra=())
    args = ["eval", str(cfg_path), f"run.output_dir={tmp_path}", "--data", str(PASSAGES), "--name", "cont"]
    rc = main([*args, "--edits", str(edits), "--protocol", "continual", "--sources", "base,passage,edits"])
    assert rc == 0
    out = tmp_path / "cont"
    forgetting = json.loads((out / "forgetting.json").read_text())
    assert len(forgetting["passages"]) == 3
    assert [(e["source"], e["student"]) for e in forgetting["entries"]] == [
        ("passage", "llama-s"),
        ("e", "llama-s"),
    ]
    for e in forgetting["entries"]:
        for m in ("em", "f1", "gold_logprob"):
            matrix = e["matrix"][m]
            assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
            assert all((matrix[i][j] is None) == (j > i) for i in range(3) for j in range(3))
        assert len(e["baseline"]["gold_logprob"]) == 3
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["n_updates"] for r in rows] == [0, 3, 3]  # base; one step per passage for each source
    # the table's row is the student after the last step, on every passage
    last = forgetting["entries"][0]["matrix"]["gold_logprob"][-1]
    n_q = [len(q) for q in (load_eval_data(PASSAGES, [], 3)[0][i].questions for i in range(3))]
    assert rows[1]["gold_logprob"] == pytest.approx(sum(v * n for v, n in zip(last, n_q)) / sum(n_q))


def test_continual_keeps_each_step_and_restores_the_student(squad_cfg, squad_task, contexts):
    from orchestrator.protocols.evaluate import load_student

    student = load_student(squad_cfg, 1, squad_task, torch.device("cpu"))  # gpt2: Conv1D LoRA merge
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    base = BaseAnswers()
    results = run_continual(student, Source("passage", "passage"), contexts, Settings(), base)
    assert [r.step for r in results] == [0, 1, 2] and [r.counted for r in results] == [False, False, True]
    assert all(r.error is None for r in results)
    m = forgetting_matrix(results, [c.id for c in contexts])["gold_logprob"]
    baseline = forgetting_matrix(
        [UpdateResult("b", "s", 0, ["x"], base.get(student, contexts))], [c.id for c in contexts]
    )
    assert m[0][0] != pytest.approx(baseline["gold_logprob"][0][0], abs=1e-5), "step 0 changed the student"
    assert m[1][0] != pytest.approx(m[0][0], abs=1e-6), "step 1 was applied on top of step 0 (merged)"
    after = student.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "make, edits, overrides, needle",
    [
        (lambda d: d / "missing.json", None, [], "not found"),
        (lambda d: _dump(d / "bad.json", [{"title": "t", "context": "c"}]), None, [], "lack"),
        (lambda d: PASSAGES, lambda d: PASSAGES, [], "completions"),
        (lambda d: PASSAGES, lambda d: _dump(d / "o.json", [_rec("Other text.")]), [], "no record matches"),
        (lambda d: TRAIN, None, [], "pretrained on"),
        (lambda d: PASSAGES, None, ["students.0.model.path=/nonexistent/model"], "students[0].model.path"),
        (lambda d: PASSAGES, None, ["task.name=synthetic"], "SQuAD-format"),
    ],
    ids=[
        "missing-data",
        "no-questions",
        "edits-no-completions",
        "edits-match-nothing",
        "leak",
        "model",
        "task",
    ],
)
def test_eval_bad_input_is_a_clear_error(squad_cfg, tmp_path, capsys, make, edits, overrides, needle):
    cfg_path = _write_cfg(squad_cfg, tmp_path / "c.yaml", students=1)
    out = tmp_path / "out"
    args = ["eval", str(cfg_path), f"run.output_dir={out}", *overrides, "--data", str(make(tmp_path))]
    if edits is not None:
        args += ["--edits", str(edits(tmp_path))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "teachedit: error:" in err and needle in err
    assert not out.exists(), "bad input fails before an eval directory is created"


def _rec(context: str) -> dict:
    return {
        "title": "t",
        "context": context,
        "questions": [{"question": "q?", "answer": "a"}],
        "completions": ["x"],
    }


def _dump(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_sources_match_passages_by_text_and_limit(tmp_path):
    edits = _edits_file(tmp_path / "edits_x.json", n=3, extra=("more",))
    contexts, sources = load_eval_data(PASSAGES, [edits, edits], limit=2)
    assert [c.id for c in contexts] == ["squad-00000", "squad-00001"]
    assert [s.name for s in sources] == ["edits_x", "edits_x-2"]
    first = json.loads(edits.read_text())[0]["completions"]
    assert sources[0].edits["squad-00000"] == tuple(first) and len(first) == 3
    assert sources[0].texts(contexts[0], k=2) == first[:2]
    assert Source("passage", "passage").texts(contexts[0]) == [contexts[0].text]
    assert Source("base", "base").texts(contexts[0]) == []
    later, _ = load_eval_data(PASSAGES, [edits], limit=1, skip=2)  # passages another table did not use
    assert [c.id for c in later] == ["squad-00002"]
    with pytest.raises(DataFormatError, match="--skip 3"):
        load_eval_data(PASSAGES, [edits], skip=3)


def test_update_items_skip_unusable_texts_with_a_note(make_student, task):
    s = make_student("llama-t")
    ctx = task.train_contexts()[0]
    items, note, error = update_items(s, "edits", [("", ctx), ("A fact.\nAnother fact.", ctx)], False)
    assert error is None and [it.completion for it in items] == ["A fact.", "Another fact."]
    assert "skipped 1 of 2" in note and "no usable text" in note
    assert update_items(s, "edits", [("  ", ctx)], False)[2] == "edit has no usable text"
    items, _, error = update_items(s, "passage", [(ctx.text, ctx)], False)
    assert error is None and items[0].prompt == "" and items[0].completion == ctx.text
    s.cfg.adapt.max_sequences = 1  # bounded like Student.evaluate_edit: recorded, not silent
    items, note, _ = update_items(s, "edits", [("a.\nb.\nc.", ctx)], False)
    assert len(items) == 1 and "max_sequences" in note


def _answer(cid: str, qi: int, em: float, lp: float, pred: str = "x") -> Answer:
    return Answer(cid, qi, f"q{qi}", "gold", pred, em, em, lp)


def test_summarize_averages_each_question_over_updates_then_questions():
    results = [  # passage c1 (2 questions) with two edits, c2 (1 question) with one
        UpdateResult("s", "st", 0, ["c1"], [_answer("c1", 0, 1.0, -1.0), _answer("c1", 1, 0.0, -3.0)]),
        UpdateResult(
            "s", "st", 1, ["c1"], [_answer("c1", 0, 0.0, -2.0), _answer("c1", 1, 0.0, -3.0)], error="e"
        ),
        UpdateResult("s", "st", 0, ["c2"], [_answer("c2", 0, 1.0, -4.0, pred="y")]),
        UpdateResult("s", "st", 9, ["c2"], [_answer("c2", 0, 0.0, 0.0)], counted=False),
    ]
    verdicts = {("q0", "gold", "x"): True, ("q1", "gold", "x"): False, ("q0", "gold", "y"): False}
    (row,) = summarize(results, verdicts)
    assert row.n_questions == 3
    assert row.em == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert row.gold_logprob == pytest.approx((-1.5 - 3.0 - 4.0) / 3)
    assert row.judge == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert (row.n_updates, row.n_failed) == (1, 1)  # only results that trained or failed count as updates


def test_judge_verdict_follows_yes_no_logprobs(make_student):
    s = make_student("llama-t")
    judge = Judge(s.model, s.tok, use_chat_template="never", batch_size=2)
    triples = [("Where is x?", "dunmore", "dunmore"), ("Who?", "kalomi", ""), ("When?", "1901", "in 1901")]
    verdicts = judge.grade(triples)
    # Reference: one unpadded sequence per (prompt, continuation), summed token log-probs.
    prompt = judge.prompt(*triples[1])
    ref = []
    for word in (" yes", " Yes"):
        p_ids = s.tok(prompt)["input_ids"]
        w_ids = s.tok(word, add_special_tokens=False)["input_ids"]
        ids = (p_ids + w_ids)[-s.model.config.max_position_embeddings :]  # the judge keeps the end
        p_ids = ids[: len(ids) - len(w_ids)]
        logp = torch.log_softmax(s.model(torch.tensor([ids])).logits[0].float(), -1)
        ref.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(p_ids), len(ids))))
    assert verdicts[1].logprob_yes == pytest.approx(float(torch.logsumexp(torch.tensor(ref), 0)), abs=1e-4)
    assert [v.correct for v in verdicts] == [v.logprob_yes > v.logprob_no for v in verdicts]
    # Make "yes" (then "no") overwhelmingly likely: the verdicts follow.
    for words, expected in (((" yes", " Yes"), 1.0), ((" no", " No"), 0.0)):
        ids = sorted({i for w in words for i in s.tok(w, add_special_tokens=False)["input_ids"]})

        def boost(module, inputs, output, ids=ids):
            output = output.clone()
            output[..., ids] += 50.0
            return output

        handle = s.model.lm_head.register_forward_hook(boost)
        try:
            assert judge_accuracy(judge.grade(triples)) == expected
        finally:
            handle.remove()


def test_judge_chat_template_prompt_and_candidates(make_student):
    s = make_student("gpt2-t")
    tok = copy.copy(s.tok)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
    )
    judge = Judge(s.model, tok, use_chat_template="auto")
    assert judge.prompt("q?", "a", "b").endswith("Respond 'yes' or 'no'. ASSISTANT:")
    assert judge.candidates() == (("yes", "Yes"), ("no", "No"))
    assert Judge(s.model, s.tok).candidates() == (
        (" yes", " Yes"),
        (" no", " No"),
    )  # no template: plain prompt
    assert len(judge.grade([("q?", "a", "b")])) == 1
