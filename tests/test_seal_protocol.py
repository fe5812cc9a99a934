"""SEAL's SQuAD protocol (task.protocol=seal) against SEAL's templates written out by hand, and the
correctness fixes of the real-model path: teacher SFT data tokenized as sampled, SEAL's keep rule, eval's
refusal to score a trained teacher on its own training passages, eval_times, student QA formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_config, to_yaml
from core.records import Context, Edit, EditResult, Question, StudentOutcome, StudentScore
from orchestrator.tasks.squad import SquadTask, seal_train_sequences

CONFIGS_REAL = Path(__file__).resolve().parents[1] / "configs" / "real_cpu.yaml"
TITLE = "Normans"
PASSAGE = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
CTX = Context("c0", PASSAGE, (Question("In what country is Normandy located?", "France"),), title=TITLE)


def test_implications_split_per_line_drop_preamble_and_append_passage():
    edit = (
        "Here are some implications:\n1. Normandy is named after the Normans.\n\n2. They lived there early."
    )
    # SEAL: split_newlines -> one sequence per non-empty line; the preamble is dropped because the second
    # line starts with "1."; the passage is appended; every sequence is "{title}\n{text}".
    assert seal_train_sequences(edit, PASSAGE, TITLE) == [
        "Normans\n1. Normandy is named after the Normans.",
        "Normans\n2. They lived there early.",
        "Normans\n" + PASSAGE,
    ]


def test_preamble_kept_when_second_line_is_not_numbered():
    edit = "Normandy is in France.\nThe Normans gave it its name."
    assert seal_train_sequences(edit, PASSAGE, TITLE) == [
        "Normans\nNormandy is in France.",
        "Normans\nThe Normans gave it its name.",
        "Normans\n" + PASSAGE,
    ]


def test_dashes_split_segments_then_lines():
    edit = "A first rewrite.\n---\nA second rewrite,\non two lines.\n---\n"
    assert seal_train_sequences(edit, PASSAGE, TITLE) == [
        "Normans\nA first rewrite.",
        "Normans\nA second rewrite,",
        "Normans\non two lines.",
        "Normans\n" + PASSAGE,
    ]


def test_self_qa_split_at_question_markers_and_first_prefixed():
    # SEAL's self-qa prompt ends in "Question 1: ", so the completion starts with the first question's text
    edit = "Where is Normandy?\nAnswer: France\nQuestion 2: Who named it?\nAnswer: The Normans"
    assert seal_train_sequences(edit, PASSAGE, TITLE) == [
        "Normans\nQuestion 1: Where is Normandy?\nAnswer: France",
        "Normans\nQuestion 2: Who named it?\nAnswer: The Normans",
        "Normans\n" + PASSAGE,
    ]


def test_task_items_qa_prompt_and_passage_source():
    task = SquadTask(num_train=2, num_heldout=2)
    items = task.training_items("Normandy is in France.", CTX, include_context=False)
    assert [(i.prompt, i.completion) for i in items] == [
        ("", "Normans\nNormandy is in France."),
        ("", "Normans\n" + PASSAGE),  # SEAL always appends the passage, include_context or not
    ]
    assert task.training_items("  \n", CTX, include_context=False) == []  # an empty edit stays unusable
    assert task.passage_item(CTX).completion == "Normans\n" + PASSAGE
    # SEAL's SQUAD_ANSWER_TEMPLATE_BASE with the question as its query_server builds it ("Topic: {title}\n...")
    assert task.qa_prompt(CTX.questions[0].question, CTX) == (
        "Let's answer a question directly and concisely.\n"
        "Question: Topic: Normans\nIn what country is Normandy located?\n"
        "Answer:\n"
    )
    assert task.qa_messages(CTX.questions[0].question, CTX) == [
        {"role": "system", "content": "You are an assistant to answer a question directly and concisely."},
        {"role": "user", "content": "Topic: Normans\nIn what country is Normandy located?"},
    ]
    old = SquadTask(num_train=2, num_heldout=2, protocol="qa_lines")
    assert old.qa_prompt("Who?", CTX) == "Q: Who? A:"


def test_teacher_prompts_are_seals():
    from core.prompts import render_prompt

    assert render_prompt("self-qa", CTX) == (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        f"Passage:\nNormans\n{PASSAGE}\n\nQuestion 1: "
    )
    assert render_prompt("implications", CTX) == (
        "Let's read the following passage and produce a list of implications derived directly or indirectly "
        f"from the content.\n\nPassage:\nNormans\n{PASSAGE}\n\nImplications:\n"
    )


def _bos_tokenizer(chat: bool):
    """A word-level tokenizer whose post-processor adds BOS (as Llama-3's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "<pad> <bos> <eos> <unk> <|user|> <|assistant|> a b c hello world edit".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat:
        tok.chat_template = (
            "{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}"
        )
    return tok


@pytest.mark.parametrize("chat", [True, False])
def test_teacher_sft_tokens_equal_sampling_tokens(chat, tmp_path):
    """ReST-EM's SFT sequence = the ids the teacher sampled from + the edit + EOS: one BOS, never two, and
    TRL's SFTTrainer keeps those ids (it does not tokenize the rendered prompt again)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from core.config import TeacherConfig
    from teacher.model import Teacher

    tok = _bos_tokenizer(chat)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    teacher = Teacher(TeacherConfig(prompt_format="notes", use_chat_template="auto"), model, tok)
    prompt = teacher.prompt(Context("x", "hello world", (), ""))
    sampled = tok(prompt, add_special_tokens=not teacher.uses_chat_template)["input_ids"]
    assert sampled.count(tok.bos_token_id) == 1
    [record] = teacher.sft_records([(prompt, "a b c")])
    n = len(sampled)
    assert record["input_ids"][:n] == sampled
    assert record["input_ids"][n:] == tok("a b c", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert record["completion_mask"] == [0] * n + [1] * 4
    from datasets import Dataset

    args = SFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_length=64,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([record]), processing_class=tok
    )
    row = trainer.train_dataset[0]
    assert row["input_ids"] == record["input_ids"]
    assert [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100] == record["input_ids"][n:]


def _result(cid, k, reward, error=None, penalty=None):
    score = StudentScore(0.0, 0.0, -3.0, 1)
    out = StudentOutcome(score, None if error else score, reward, error=error)
    return EditResult(Edit(cid, "implications", k, f"e{k}", "round_0"), {"s": out}, reward, penalty=penalty)


def test_keep_seal_keeps_best_per_context_whatever_its_sign():
    from orchestrator.algorithms.rest_em import select_edits

    results = [
        _result("a", 0, -0.5),
        _result("a", 1, -0.2),
        _result("a", 2, 0.0, error="edit has no usable text"),
        _result("b", 0, 0.3),
        _result("b", 1, 0.1),
        _result("c", 0, -1.0, penalty="empty edit"),
    ]
    kept = {(r.edit.context_id, r.edit.sample_index) for r in select_edits(results, "seal", 0.0)}
    assert kept == {("a", 1), ("b", 0)}  # a's failed edit (reward 0) and c's penalised one are never kept
    # best_of_k keeps only rewards above the threshold: a's best is its failed edit's 0.0, so only b
    assert {(r.edit.context_id, r.edit.sample_index) for r in select_edits(results, "best_of_k", 0.0)} == {
        ("b", 0)
    }


def test_keep_above_mean_keeps_every_edit_above_its_contexts_mean():
    from orchestrator.algorithms.rest_em import select_edits

    results = [
        _result("a", 0, -0.6),
        _result("a", 1, -0.2),
        _result("a", 2, 0.1),
        _result("a", 3, 5.0, error="edit has no usable text"),  # unusable: outside the mean, never kept
        _result("b", 0, 0.3),
        _result("b", 1, 0.3),  # ties with its context's mean: no advantage
        _result("c", 0, 0.9),  # the only usable edit of its context: nothing to compare with
        _result("c", 1, 2.0, penalty="empty edit"),
    ]
    kept = {(r.edit.context_id, r.edit.sample_index) for r in select_edits(results, "above_mean", 0.0)}
    assert kept == {("a", 1), ("a", 2)}  # a's usable mean is -0.233
    # the threshold is a margin over the mean: -0.2 beats it by 0.033 only
    assert {(r.edit.context_id, r.edit.sample_index) for r in select_edits(results, "above_mean", 0.1)} == {
        ("a", 2)
    }


def _fake_run(tmp_path: Path, k: int) -> Path:
    run = tmp_path / "runs" / "r"
    cfg = load_config(
        CONFIGS_REAL, ["task.path=null", "task.num_train_contexts=30", "task.num_heldout_contexts=10"]
    )
    (run / "teacher" / f"round_{k}").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    return run / "teacher" / f"round_{k}"


def test_eval_refuses_trained_teacher_on_its_training_passages(tmp_path):
    from orchestrator.protocols.data import load_eval_data
    from orchestrator.protocols.evaluate import check_teacher_unseen
    from orchestrator.tasks.squad import bundled_path

    contexts, _ = load_eval_data(str(bundled_path()), [], 40)
    cfg = load_config(
        CONFIGS_REAL, [f"teacher.model.path={_fake_run(tmp_path, 1)}", "teacher.model.gguf=null"]
    )
    with pytest.raises(ConfigError, match="allow-trained-passages"):
        check_teacher_unseen(cfg, contexts)
    untrained = load_config(
        CONFIGS_REAL, [f"teacher.model.path={_fake_run(tmp_path / 'u', 0)}", "teacher.model.gguf=null"]
    )
    check_teacher_unseen(untrained, contexts)  # round_0 was never trained: nothing to refuse


def test_eval_times_averages_independent_updates(make_student, task):
    from student.lifecycle import repeat_seed

    ctx = task.train_contexts()[0]
    edit = "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions)
    s = make_student("llama-t", eval_times=2, edit_batch_size=2)
    [both] = s.evaluate_edits([edit], [ctx], [11])
    one, two = s.evaluate_once(edit, ctx, 11), s.evaluate_once(edit, ctx, repeat_seed(11, 1))
    assert one.adapted.logprob != two.adapted.logprob  # the two updates really differ
    assert both.adapted.logprob == pytest.approx((one.adapted.logprob + two.adapted.logprob) / 2, abs=1e-4)
    assert both.adapted.em == pytest.approx((one.adapted.em + two.adapted.em) / 2)
    assert s.evaluate_edit(edit, ctx, 11).adapted.logprob == pytest.approx(both.adapted.logprob, abs=1e-4)


def test_student_chat_template_modes(make_student):
    s = make_student("llama-t")
    assert s.chat is False  # tiny tokenizers have no chat template: auto falls back to the task's prompt
    from student.prompting import answer_continuation, uses_chat_template

    with pytest.raises(ValueError, match="no chat template"):
        uses_chat_template(s.tok, "always")
    assert answer_continuation("Q: x A:", "Paris ") == " Paris"
    assert answer_continuation("Answer:\n", " Paris") == "Paris"


def test_config_rejects_two_model_sources_and_bad_modes():
    with pytest.raises(ConfigError, match="only one of model.path and model.gguf"):
        load_config(None, ["teacher.model.path=x", "teacher.model.gguf=y"])
    with pytest.raises(ConfigError, match="use_chat_template"):
        load_config(CONFIGS_REAL, ["students.0.use_chat_template=maybe"])
    with pytest.raises(ConfigError, match="task.protocol"):
        load_config(None, ["task.protocol=other"])


def test_real_cpu_config_validates():
    cfg = load_config(CONFIGS_REAL)
    assert [s.model.gguf for s in cfg.students] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert cfg.task.protocol == "seal" and cfg.algorithm.keep == "seal"
