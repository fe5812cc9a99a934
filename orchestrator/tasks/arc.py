"""SEAL's few-shot ARC protocol as a task: the teacher writes a JSON directive, the student test-time trains.

A *context* is one ARC task: its demonstration pairs are what the teacher sees (``Context.text``), its test
input/output pairs are the held-out questions. The teacher answers the ``arc-directive`` prompt with a JSON
directive (augmentation families, loss strategy, learning rate, epochs); :func:`parse_directive` validates
it with ``json.loads`` only, and an invalid or out-of-range directive is rejected with its reason (the student
records a zero reward; nothing the model wrote is ever executed).

The student's inner loop (through the task hooks :meth:`ArcFewShotTask.training_items_for` and
:meth:`ArcFewShotTask.score`, which :class:`student.student.Student` calls when a task has them):

1. leave-one-out episodes from the demonstration pairs, for the original pairs and for every transform of
   the directive's families (plus colour-permuted copies, as SEAL does), as text with :func:`grid_to_text`;
2. a LoRA trained on them with the directive's learning rate and epochs (clamped to ``task.arc`` caps) and
   loss on all tokens or on the query output only;
3. greedy prediction of each test output under several invertible views (``task.arc.views``), each parsed,
   mapped back with the view's inverse and combined by majority vote; scored by exact grid match.

Grids are plain text (one row of digits per line; ``input:`` / ``output:`` headers), so no tokenizer's special
ids matter. Tiny models pretrain on synthetic rule tasks and augmented demonstration pairs of the training
split (student) and on (task, directive) pairs with directives drawn uniformly from the schema, some of them
invalid (teacher). The held-out (evaluation split) tasks are never seen before they are scored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from core.config import AdaptConfig, ArcTaskConfig
from core.records import Context, Question, StudentScore
from core.task import Task, TrainingItem
from orchestrator.tasks.arc_grids import (
    AUGMENTATIONS,
    FAMILIES,
    LEARNING_RATE_RANGE,
    STRATEGIES,
    ArcTask,
    Directive,
    DirectiveError,
    Grid,
    Pair,
    apply_augmentation,
    augment_pairs,
    grid_to_text,
    invert_prediction,
    leave_one_out,
    load_arc_tasks,
    parse_directive,
    permute_colours,
    random_colour_permutation,
    text_to_grid,
    vote,
)

log = logging.getLogger(__name__)

PROMPT_FORMAT = "arc-directive"  # registered in core.prompts.PROMPT_FORMATS
BUNDLED = {
    "train_challenges": "arc-agi_training_challenges_filtered_1B_training_set.json",
    "train_solutions": "arc-agi_training_solutions_filtered_1B_training_set.json",
    "eval_challenges": "arc-agi_evaluation_challenges_filtered_1B_eval_set.json",
    "eval_solutions": "arc-agi_evaluation_solutions_filtered_1B_eval_set.json",
}
# Tokens a tokenizer may add around a sequence (BOS, EOS, a SentencePiece prefix): the character budget of a
# sequence leaves room for them, since no tokenizer makes more than one token of an ASCII character.
_SPECIAL_MARGIN = 4
# The tiny teacher's corpus: a uniform draw over the schema on this learning-rate grid, and this share invalid.
LR_CHOICES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
INVALID_FRACTION = 0.25


def bundled_path(key: str) -> Path:
    """Path of a bundled ARC file (see orchestrator/data/arc/README.md); ``key`` as in :data:`BUNDLED`."""
    return Path(str(resources.files("orchestrator") / "data" / "arc" / BUNDLED[key]))


# --------------------------------------------------------------------------------------------------
# Text format


def pair_text(pair: Pair) -> str:
    """One demonstration: ``input:``, its grid, ``output:``, its grid, each on its own lines."""
    return f"input:\n{grid_to_text(pair['input'])}\noutput:\n{grid_to_text(pair['output'])}\n"


def demos_text(pairs: Sequence[Pair]) -> str:
    """Demonstration pairs separated by blank lines (what the teacher reads, and a prompt's prefix)."""
    return "\n".join(pair_text(p) for p in pairs)


def query_prompt(demos: Sequence[Pair], query_input: Grid) -> str:
    """Demonstrations, then the query input; the model continues with the output grid."""
    prefix = demos_text(demos) + "\n" if demos else ""
    return f"{prefix}input:\n{grid_to_text(query_input)}\noutput:\n"


def episode_item(demos: Sequence[Pair], query: Pair) -> TrainingItem:
    """A few-shot episode as a training sequence: the prompt is masked when loss is on outputs only."""
    return TrainingItem(prompt=query_prompt(demos, query["input"]), completion=grid_to_text(query["output"]))


def item_chars(item: TrainingItem) -> int:
    return len(item.prompt) + len(item.completion)


def apply_pairs(name: str, pairs: Sequence[Pair]) -> list[Pair]:
    """Apply a named transform to every grid of ``pairs`` (ValueError if a result is invalid)."""
    return [{k: apply_augmentation(name, g) for k, g in p.items()} for p in pairs]


# --------------------------------------------------------------------------------------------------
# Directives: what they do to the inner loop, how the tiny teacher's corpus draws them, how reports classify them


def directive_adapt(d: Directive, adapt: AdaptConfig, caps: ArcTaskConfig) -> AdaptConfig:
    """The student's settings for this edit: the directive's learning rate, epochs (clamped to the caps) and
    loss (``train_using_output_tokens`` masks the prompt: loss on the query's output grid only)."""
    return dataclasses.replace(
        adapt,
        learning_rate=min(d.learning_rate, caps.max_learning_rate),
        epochs=min(d.num_train_epochs, caps.max_epochs),
        loss_on="all" if d.strategy == "train_using_all_tokens" else "completion",
    )


def random_directive(rng: random.Random) -> Directive:
    """A directive drawn uniformly from the schema (learning rates on :data:`LR_CHOICES`)."""
    return Directive(
        use_basic_augmentations=rng.random() < 0.5,
        use_size_augmentations=rng.random() < 0.5,
        use_chain_augmentations=rng.random() < 0.5,
        use_repeat_augmentations=rng.random() < 0.5,
        strategy=rng.choice(STRATEGIES),
        learning_rate=rng.choice(LR_CHOICES),
        num_train_epochs=rng.randint(1, 20),
    )


def invalid_directive(rng: random.Random) -> str:
    """Directive text that :func:`parse_directive` rejects: broken JSON, values out of range, or a schema
    error. The tiny teacher learns to write such mistakes too, as real teachers do."""
    d = random_directive(rng).to_dict()
    kind = rng.choice(["truncated", "python", "lr", "epochs", "strategy", "missing"])
    if kind == "truncated":  # generation cut off mid-object
        text = Directive(**{**d["data_generation"], **d["training"]}).to_json()
        return text[: rng.randint(10, len(text) - 2)]
    if kind == "python":  # Python literals are not JSON
        return str(d)
    if kind == "lr":
        d["training"]["learning_rate"] = rng.choice([0.0, 0.05, 0.1, 1.0, LEARNING_RATE_RANGE[0] / 10])
    elif kind == "epochs":
        d["training"]["num_train_epochs"] = rng.choice([0, 30, 50, 100])
    elif kind == "strategy":
        d["training"]["strategy"] = rng.choice(["train_using_input_tokens", "train_on_everything"])
    else:
        section = rng.choice(["data_generation", "training"])
        del d[section][rng.choice(list(d[section]))]
    return json.dumps(d)


def classify_edit(text: str) -> str:
    """``valid``, ``invalid_json``, ``out_of_range`` or ``invalid_schema`` (for the per-round reports)."""
    try:
        parse_directive(text)
    except DirectiveError as exc:
        msg = str(exc)
        if msg.startswith("invalid JSON"):
            return "invalid_json"
        return "out_of_range" if "out of range" in msg else "invalid_schema"
    return "valid"


# --------------------------------------------------------------------------------------------------
# The inner loop's training data


def _permute_pairs(pairs: Sequence[Pair], perm: list[int]) -> list[Pair]:
    return [{k: permute_colours(g, perm) for k, g in p.items()} for p in pairs]


def inner_loop_items(
    train: Sequence[Pair], d: Directive, caps: ArcTaskConfig, max_chars: int, rng: random.Random
) -> list[TrainingItem]:
    """Leave-one-out episodes of the original pairs and of every transform of the directive's families
    (with ``caps.colour_permutations`` colour-permuted copies when any family is on), deduplicated, those
    longer than ``max_chars`` dropped, at most ``caps.max_items`` (the original episodes first)."""
    if len(train) < 2:
        raise ValueError(f"the task has {len(train)} demonstration pair(s); leave-one-out needs at least 2")
    per_family = caps.max_per_family or None
    augmented = [pairs for _, pairs in augment_pairs(train, d.families, rng, per_family)]
    coloured = [
        _permute_pairs(v, random_colour_permutation(rng))
        for _ in range(caps.colour_permutations if d.families else 0)
        for v in [list(train), *augmented]
    ]
    base = [episode_item(demos, q) for demos, q in leave_one_out(train)]
    extra = [episode_item(demos, q) for v in augmented + coloured for demos, q in leave_one_out(v)]
    rng.shuffle(extra)
    items = [it for it in dict.fromkeys(base + extra) if item_chars(it) <= max_chars]
    if not items:
        raise ValueError(
            f"no leave-one-out sequence fits in {max_chars} characters; raise adapt.max_length "
            "and task.arc.max_tokens"
        )
    return items[: caps.max_items]


# --------------------------------------------------------------------------------------------------
# Prediction under views, voting, scores


def view_prompts(train: Sequence[Pair], test_input: Grid, views: Sequence[str]) -> list[tuple[str, str]]:
    """``(view, prompt)`` for each view whose transform applies (e.g. the result stays within 30x30)."""
    out = []
    for view in views:
        try:
            out.append((view, query_prompt(apply_pairs(view, train), apply_augmentation(view, test_input))))
        except ValueError:
            continue
    return out


def vote_views(views: Sequence[str], texts: Sequence[str]) -> Grid | None:
    """Parse each view's generated text, map it back with the view's inverse, and take the majority grid."""
    return vote([invert_prediction(v, text_to_grid(t)) for v, t in zip(views, texts)])


def cell_accuracy(pred: Grid | None, gold: Grid) -> float:
    """Fraction of cells equal to the gold grid's; 0 when the shapes differ or there is no prediction."""
    if pred is None or len(pred) != len(gold) or len(pred[0]) != len(gold[0]):
        return 0.0
    cells = [a == b for pr, gr in zip(pred, gold) for a, b in zip(pr, gr)]
    return sum(cells) / len(cells)


def _position_limit(model: Any) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def greedy_texts(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations (left-padded batches, ending at EOS), kept within the model's positions."""
    from student.scoring import greedy_completions

    return greedy_completions(model, tok, prompts, max_new_tokens, batch_size, _position_limit(model))


def completion_logprobs(model: Any, tok: Any, items: list[TrainingItem], batch_size: int) -> list[float]:
    """Mean log-probability of each item's completion tokens (the output grid and EOS) after its prompt,
    teacher-forced; the tokens are exactly those the inner loop trains on (:func:`student.sequences.collate`)."""
    import torch

    from student.sequences import IGNORE, collate

    device = next(model.parameters()).device
    limit = _position_limit(model) or 1 << 30
    out: list[float] = []
    for i in range(0, len(items), batch_size):
        batch = collate(tok, items[i : i + batch_size], limit, loss_on="completion").to(device)
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch.labels[:, 1:]
        mask = targets != IGNORE
        picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
        out += (picked.sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return out


# --------------------------------------------------------------------------------------------------
# Pretraining corpora for tiny models (never the training or held-out contexts themselves)

# Rules of the synthetic tasks: one named transform, or a colour permutation ("colours").
_SYNTHETIC_RULES = (*FAMILIES["basic"], *FAMILIES["size"], *FAMILIES["repeated"], "identity", "colours")


def random_grid(rng: random.Random, max_side: int = 5) -> Grid:
    """A small grid: mostly background 0 with a few colours."""
    h, w = rng.randint(2, max_side), rng.randint(2, max_side)
    palette = rng.sample(range(1, 10), rng.randint(1, 3))
    density = rng.uniform(0.2, 0.7)
    return [[rng.choice(palette) if rng.random() < density else 0 for _ in range(w)] for _ in range(h)]


def synthetic_task(rng: random.Random, n_pairs: int) -> list[Pair]:
    """``n_pairs`` pairs of random grids related by one random rule."""
    rule = rng.choice(_SYNTHETIC_RULES)
    perm = random_colour_permutation(rng)
    inputs = [random_grid(rng) for _ in range(n_pairs)]
    if rule == "colours":
        return [{"input": g, "output": permute_colours(g, perm)} for g in inputs]
    return [{"input": g, "output": apply_augmentation(rule, g)} for g in inputs]


class ArcFewShotTask(Task):
    """ARC tasks as contexts; see the module docstring. Built from ``task.*`` and ``task.arc.*``."""

    name = "arc"
    formats = (PROMPT_FORMAT,)

    def __init__(self, settings: ArcTaskConfig, num_train: int = 12, num_heldout: int = 10):
        self.settings = settings
        train = self._load("train", settings.train_challenges, settings.train_solutions)
        held = self._load("eval", settings.eval_challenges, settings.eval_solutions)
        self._pretrain_pairs = [t.train for t in train]  # demonstration pairs only, never test outputs
        self._tasks: dict[str, ArcTask] = {}
        self._train = self._contexts("train", self._fitting(train), num_train)
        self._heldout = self._contexts("eval", self._fitting(held), num_heldout)

    # -- data ------------------------------------------------------------------------------------------
    @staticmethod
    def _load(split: str, challenges: str | None, solutions: str | None) -> list[ArcTask]:
        cpath = challenges or bundled_path(f"{split}_challenges")
        spath = solutions or (bundled_path(f"{split}_solutions") if challenges is None else None)
        if spath is None:
            raise ValueError(f"task.arc.{split}_solutions must be set with task.arc.{split}_challenges")
        return load_arc_tasks(cpath, spath)

    @staticmethod
    def task_chars(task: ArcTask) -> int:
        """Longest scored sequence of a task (all pairs, a test input and its output) in either orientation
        (transposing changes the number of newlines)."""
        golds = [{"input": x, "output": y} for x, y in zip(task.test_inputs, task.test_outputs)]
        return max(
            item_chars(episode_item(apply_pairs(view, task.train), apply_pairs(view, [g])[0]))
            for g in golds
            for view in ("identity", "transpose")
        )

    def _fitting(self, tasks: list[ArcTask]) -> list[ArcTask]:
        budget = self.settings.max_tokens - _SPECIAL_MARGIN
        keep = []
        for t in tasks:
            n = self.task_chars(t)
            if n > budget:
                log.info(
                    "ARC task %s dropped: %d characters > task.arc.max_tokens budget %d", t.task_id, n, budget
                )
            else:
                keep.append(t)
        return keep

    def _contexts(self, split: str, tasks: list[ArcTask], n: int) -> list[Context]:
        if len(tasks) < n:
            log.info(
                "ARC %s split: %d task(s) fit task.arc.max_tokens=%d, fewer than the %d asked for; using %d",
                split,
                len(tasks),
                self.settings.max_tokens,
                n,
                len(tasks),
            )
        out = []
        for t in tasks[:n]:
            ctx = Context(
                id=f"arc-{split}-{t.task_id}",
                text=demos_text(t.train),
                questions=tuple(
                    Question(grid_to_text(x), grid_to_text(y)) for x, y in zip(t.test_inputs, t.test_outputs)
                ),
                title=t.task_id,
            )
            self._tasks[ctx.id] = t
            out.append(ctx)
        return out

    def arc_task(self, context: Context) -> ArcTask:
        if context.id not in self._tasks:
            raise KeyError(f"{context.id!r} is not a context of this ARC task set")
        return self._tasks[context.id]

    def train_contexts(self) -> list[Context]:
        return list(self._train)

    def heldout_contexts(self) -> list[Context]:
        return list(self._heldout)

    # -- the student's inner loop (hooks called by student.student.Student) --------------------------------
    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        return f"input:\n{question}\noutput:\n"

    def training_items_for(
        self, edit_text: str, context: Context, adapt: AdaptConfig, seed: int
    ) -> tuple[list[TrainingItem], AdaptConfig]:
        """Items and settings from the teacher's directive. Raises :class:`DirectiveError` (a ValueError) for
        an invalid directive and ValueError when no sequence fits: the student records a zero reward."""
        d = parse_directive(edit_text)
        max_chars = min(adapt.max_length, self.settings.max_tokens) - _SPECIAL_MARGIN
        items = inner_loop_items(
            self.arc_task(context).train, d, self.settings, max_chars, random.Random(seed)
        )
        plan = directive_adapt(d, adapt, self.settings)
        log.debug("%s: %d sequences, lr %g, %d epochs, loss on %s", context.id, len(items),
                  plan.learning_rate, plan.epochs, plan.loss_on)  # fmt: skip
        return items, plan

    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        """The Task protocol's form: the directive's items under default settings (the pairs are the
        training data, so ``include_context`` adds nothing)."""
        adapt = AdaptConfig(max_length=self.settings.max_tokens)
        return self.training_items_for(edit_text, context, adapt, 0)[0]

    def score(
        self, model: Any, tok: Any, context: Context, max_new_tokens: int, batch_size: int
    ) -> StudentScore:
        """Per test input: greedy predictions under every view, inverted and voted. ``em``: exact grid match,
        ``f1``: cell accuracy of the voted grid, ``logprob``: mean log-prob of the gold output's tokens."""
        task = self.arc_task(context)
        owners, prompts = [], []
        for i, x in enumerate(task.test_inputs):
            for view, prompt in view_prompts(task.train, x, self.settings.views):
                owners.append((i, view))
                prompts.append(prompt)
        texts = greedy_texts(model, tok, prompts, max_new_tokens, batch_size)
        golds = [{"input": x, "output": y} for x, y in zip(task.test_inputs, task.test_outputs)]
        lps = completion_logprobs(model, tok, [episode_item(task.train, g) for g in golds], batch_size)
        em, acc = [], []
        for i, gold in enumerate(task.test_outputs):
            mine = [(v, t) for (j, v), t in zip(owners, texts) if j == i]
            voted = vote_views([v for v, _ in mine], [t for _, t in mine])
            em.append(float(voted == gold))
            acc.append(cell_accuracy(voted, gold))
        n = len(golds)
        return StudentScore(em=sum(em) / n, f1=sum(acc) / n, logprob=sum(lps) / n, n_questions=n)

    classify_edit = staticmethod(classify_edit)

    # -- tiny-model pretraining corpora -------------------------------------------------------------------
    def student_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Few-shot episodes in the grid text format: half synthetic rule tasks, half augmented demonstration
        pairs of the training split (never a test output, never an evaluation-split task)."""
        rng = random.Random(seed)
        names = [*AUGMENTATIONS.keys()]
        budget = self.settings.max_tokens - _SPECIAL_MARGIN
        out: list[tuple[str, str]] = []
        while len(out) < n:
            if rng.random() < 0.5 or not self._pretrain_pairs:
                pairs = synthetic_task(rng, rng.randint(3, 5))
            else:
                pairs = rng.choice(self._pretrain_pairs)
                name = rng.choice([n_ for n_ in names if not n_.startswith(("down", "untile"))])
                try:
                    pairs = _permute_pairs(apply_pairs(name, pairs), random_colour_permutation(rng))
                except ValueError:
                    continue  # larger than 30x30
                if len(pairs) < 2:
                    continue
            demos, query = rng.choice(leave_one_out(pairs))
            item = episode_item(demos, query)
            if item_chars(item) <= budget:
                out.append((item.prompt, item.completion))
        return out

    def teacher_corpus(self, n: int, seed: int) -> list[tuple[Context, str]]:
        """(synthetic task, directive) pairs: directives uniform over the schema, :data:`INVALID_FRACTION`
        of them invalid, so the initial teacher makes the mistakes the reward has to train away."""
        rng = random.Random(seed)
        out = []
        for i in range(n):
            pairs = synthetic_task(rng, rng.randint(2, 4))
            ctx = Context(id=f"arc-pre-{i}", text=demos_text(pairs), questions=())
            text = (
                invalid_directive(rng) if rng.random() < INVALID_FRACTION else random_directive(rng).to_json()
            )
            out.append((ctx, text))
        return out
