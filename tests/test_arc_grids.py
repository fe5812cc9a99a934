"""Tests for orchestrator.tasks.arc_grids (ARC grids, augmentations, directives, voting, data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator.tasks import arc_grids as ag
from orchestrator.tasks.arc_grids import DirectiveError, parse_directive

DATA = Path(__file__).resolve().parents[1] / "orchestrator" / "data" / "arc"

G = [[1, 2, 3], [4, 5, 6]]  # 2x3, non-square
BASIC = [
    "rotate90",
    "rotate180",
    "rotate270",
    "flip_horizontal",
    "flip_vertical",
    "transpose",
    "anti_transpose",
]

VALID = {
    "data_generation": {
        "use_basic_augmentations": True,
        "use_size_augmentations": False,
        "use_chain_augmentations": True,
        "use_repeat_augmentations": False,
    },
    "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 3},
}


def random_grid(rng: random.Random, max_side: int = 7) -> ag.Grid:
    h = rng.randint(1, max_side)
    w = rng.choice([x for x in range(1, max_side + 1) if x != h])  # non-square
    return [[rng.randint(0, 9) for _ in range(w)] for _ in range(h)]


def directive_text(**overrides: object) -> str:
    d = json.loads(json.dumps(VALID))
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        d[section][key] = value
    return json.dumps(d)


# ---------------------------------------------------------------- grids


def test_validate_grid_rejects_bad_grids() -> None:
    assert ag.validate_grid(((1, 2), (3, 4))) == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="rectangular"):
        ag.validate_grid([[1, 2], [3]])
    with pytest.raises(ValueError, match="0-9"):
        ag.validate_grid([[1, 10]])
    with pytest.raises(ValueError, match="0-9"):
        ag.validate_grid([[-1]])
    with pytest.raises(ValueError, match="empty"):
        ag.validate_grid([])
    with pytest.raises(ValueError, match="empty"):
        ag.validate_grid([[]])
    with pytest.raises(ValueError, match="30x30"):
        ag.validate_grid([[0] * 31])
    with pytest.raises(ValueError, match="30x30"):
        ag.validate_grid([[0]] * 31)
    with pytest.raises(ValueError, match="int"):
        ag.validate_grid([[True, 1]])
    ag.validate_grid([[0] * 30] * 30)


def test_grid_text_round_trip() -> None:
    assert ag.grid_to_text([[0, 1, 2], [3, 4, 0]]) == "012\n340"
    rng = random.Random(0)
    for _ in range(50):
        g = random_grid(rng)
        assert ag.text_to_grid(ag.grid_to_text(g)) == g


def test_text_to_grid_finds_first_grid_in_model_output() -> None:
    text = "The answer is:\n```\n012\n340\n```\nand another\n99\n99"
    assert ag.text_to_grid(text) == [[0, 1, 2], [3, 4, 0]]
    assert ag.text_to_grid("Output:\n 0 1 2 \n 3 4 0 \n") == [[0, 1, 2], [3, 4, 0]]


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   \n\n",
        "no grid here",
        "012\n34",  # ragged rows
        "\x00\xff\x89PNG\r\n\x1a\n\x00\x00",  # binary garbage
        bytes(range(256)).decode("latin-1"),
        "1" * 31,  # wider than 30
        "\n".join(["1"] * 31),  # taller than 30
        "١٢٣",  # non-ASCII digits
        None,
        b"012\n340",
    ],
)
def test_text_to_grid_returns_none_on_junk(junk: object) -> None:
    assert ag.text_to_grid(junk) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- geometric transforms


def test_rotate90_four_times_is_identity() -> None:
    g = G
    for _ in range(4):
        g = ag.rotate90(g)
    assert g == G


def test_rotations_compose() -> None:
    assert ag.rotate90(ag.rotate90(G)) == ag.rotate180(G)
    assert ag.rotate90(ag.rotate180(G)) == ag.rotate270(G)
    assert ag.rotate90(G) == [[4, 1], [5, 2], [6, 3]]  # clockwise


def test_hand_computed_transforms() -> None:
    assert ag.flip_horizontal(G) == [[3, 2, 1], [6, 5, 4]]
    assert ag.flip_vertical(G) == [[4, 5, 6], [1, 2, 3]]
    assert ag.transpose(G) == [[1, 4], [2, 5], [3, 6]]
    assert ag.anti_transpose(G) == [[6, 3], [5, 2], [4, 1]]


@pytest.mark.parametrize("name", BASIC + ["upscale2", "upscale_height2", "upscale_width2", "tile_both2"])
def test_transform_then_inverse_is_identity(name: str) -> None:
    rng = random.Random(0)
    for _ in range(20):
        g = random_grid(rng)
        out = ag.apply_augmentation(name, g)
        assert ag.invert_augmentation(name, out) == g
        assert ag.apply_augmentation(ag.inverse_of(name), out) == g


def test_every_family_member_is_invertible() -> None:
    rng = random.Random(0)
    g = random_grid(rng)
    for family, names in ag.FAMILIES.items():
        assert names, family
        for name in names:
            assert ag.invert_augmentation(name, ag.apply_augmentation(name, g)) == g, name


def test_inverse_names() -> None:
    assert ag.inverse_of("rotate90") == "rotate270"
    assert ag.inverse_of("rotate270") == "rotate90"
    assert ag.inverse_of("transpose") == "transpose"
    assert ag.inverse_of("rotate90+upscale2") == "downscale2+rotate270"
    with pytest.raises(ValueError, match="unknown augmentation"):
        ag.apply_augmentation("rotate45", G)


def test_size_and_tile() -> None:
    assert ag.upscale([[1, 2]], 2) == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert ag.upscale([[1, 2]], (1, 3)) == [[1, 1, 1, 2, 2, 2]]
    assert ag.downscale([[1, 1, 2, 2], [1, 1, 2, 2]], 2) == [[1, 2]]
    assert ag.tile([[1, 2]], 2, 2) == [[1, 2, 1, 2], [1, 2, 1, 2]]
    assert ag.repeat([[1]], 1, 3) == [[1], [1], [1]]
    assert ag.untile([[1, 2, 1, 2]], 2, 1) == [[1, 2]]
    with pytest.raises(ValueError, match="divisible"):
        ag.downscale([[1, 2, 3]], 2)
    with pytest.raises(ValueError, match="single colour"):
        ag.downscale([[1, 2], [1, 1]], 2)
    with pytest.raises(ValueError, match="30x30"):
        ag.upscale([[0] * 16], 2)
    assert ag.invert_prediction("upscale2", [[1, 2, 3]]) is None
    assert ag.invert_prediction("upscale2", None) is None


# ---------------------------------------------------------------- colours


def test_colour_permutation_inverse_restores() -> None:
    rng = random.Random(0)
    for _ in range(20):
        g = random_grid(rng)
        perm = ag.random_colour_permutation(rng)
        assert perm[0] == 0 and sorted(perm) == list(range(10))
        out = ag.permute_colours(g, perm)
        assert all(out[r][c] == perm[g[r][c]] for r in range(len(g)) for c in range(len(g[0])))
        assert ag.permute_colours(out, ag.invert_permutation(perm)) == g


def test_colour_permutation_background_and_validation() -> None:
    perm = [1, 0, 2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="background"):
        ag.permute_colours([[0, 1]], perm)
    assert ag.permute_colours([[0, 1]], perm, keep_background=False) == [[1, 0]]
    with pytest.raises(ValueError, match="permutation"):
        ag.permute_colours([[0]], [0, 1, 1, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match="permutation"):
        ag.permute_colours([[0]], list(range(9)))


# ---------------------------------------------------------------- augment_pairs / leave-one-out


PAIRS = [
    {"input": [[1, 0, 0], [0, 0, 0]], "output": [[2, 0, 0], [0, 0, 0]]},
    {"input": [[0, 3], [0, 0]], "output": [[0, 4], [0, 0]]},
    {"input": [[5]], "output": [[6]]},
]


def test_augment_pairs_transforms_inputs_and_outputs_consistently() -> None:
    views = ag.augment_pairs(PAIRS, ["basic", "size", "chained", "repeated"], random.Random(0))
    names = [name for name, _ in views]
    assert names == [n for fam in ("basic", "size", "chained", "repeated") for n in ag.FAMILIES[fam]]
    for name, pairs in views:
        assert len(pairs) == len(PAIRS)
        for orig, new in zip(PAIRS, pairs, strict=True):
            assert new["input"] == ag.apply_augmentation(name, orig["input"])
            assert new["output"] == ag.apply_augmentation(name, orig["output"])
            assert ag.invert_augmentation(name, new["output"]) == orig["output"]
    assert PAIRS[0]["input"] == [[1, 0, 0], [0, 0, 0]]  # originals untouched


def test_augment_pairs_sampling_and_errors() -> None:
    views = ag.augment_pairs(PAIRS, ["basic", "repeated"], random.Random(0), max_per_family=2)
    assert len(views) == 4
    assert {n for n, _ in views[:2]} <= set(ag.FAMILIES["basic"])
    assert {n for n, _ in views[2:]} <= set(ag.FAMILIES["repeated"])
    again = ag.augment_pairs(PAIRS, ["basic", "repeated"], random.Random(0), max_per_family=2)
    assert again == views  # deterministic given the rng
    assert ag.augment_pairs(PAIRS, [], random.Random(0)) == []
    with pytest.raises(ValueError, match="unknown augmentation family"):
        ag.augment_pairs(PAIRS, ["colour"], random.Random(0))
    with pytest.raises(ValueError, match="pairs\\[0\\]"):
        ag.augment_pairs([{"output": [[1]]}], ["basic"], random.Random(0))


def test_augment_pairs_skips_transforms_that_exceed_30x30() -> None:
    big = [{"input": [[1] * 20] * 3, "output": [[2] * 20] * 3}]
    names = [n for n, _ in ag.augment_pairs(big, ["size", "repeated"], random.Random(0))]
    assert names == ["upscale_height2", "tile_vertical2"]


def test_leave_one_out_sizes() -> None:
    tasks = ag.leave_one_out(PAIRS)
    assert len(tasks) == 3
    for i, (demos, query) in enumerate(tasks):
        assert len(demos) == 2
        assert query is PAIRS[i]
        assert query not in demos
    assert ag.leave_one_out(PAIRS[:1]) == []
    assert ag.leave_one_out([]) == []


# ---------------------------------------------------------------- directives


def test_parse_directive_accepts_valid() -> None:
    d = parse_directive(json.dumps(VALID))
    assert d.use_basic_augmentations and not d.use_size_augmentations
    assert d.strategy == "train_using_output_tokens"
    assert d.learning_rate == 1e-4 and d.num_train_epochs == 3
    assert d.families == ["basic", "chained"]
    assert parse_directive(d.to_json()) == d
    assert json.loads(d.to_json()) == VALID


def test_parse_directive_extracts_object_from_prose() -> None:
    text = f'Here is my plan {{for you}}:\n```json\n{json.dumps(VALID)}\n```\nThe "}}" is fine.'
    assert parse_directive(text).families == ["basic", "chained"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"data_generation": {,}', "invalid JSON"),
        ("{'data_generation': {}}", "invalid JSON"),
        ("", "invalid JSON"),
        ("no json here at all", "invalid JSON"),
        ("[1, 2, 3]", "must be a JSON object"),
        ('"just a string"', "must be a JSON object"),
        (json.dumps({**VALID, "extra": 1}), "unknown key 'extra'"),
        (directive_text(training__warmup=5), "unknown key 'warmup'"),
        (directive_text(data_generation__use_colour_augmentations=True), "unknown augmentation family"),
        (directive_text(training__learning_rate=0.5), "learning_rate"),
        (directive_text(training__learning_rate=1e-9), "out of range"),
        (directive_text(training__num_train_epochs=0), "num_train_epochs=0 is out of range"),
        (directive_text(training__num_train_epochs=21), "num_train_epochs"),
        (directive_text(training__num_train_epochs=2.5), "must be an integer"),
        (directive_text(data_generation__use_basic_augmentations="true"), "must be a boolean"),
        (directive_text(training__learning_rate="1e-4"), "must be a number"),
        (directive_text(training__strategy="train_on_everything"), "training.strategy must be one of"),
        (json.dumps({"training": VALID["training"]}), "missing key 'data_generation'"),
        (json.dumps({"data_generation": [], "training": VALID["training"]}), "must be a JSON object"),
        ('{"training": 1, "training": 2}', "duplicate key"),
    ],
)
def test_parse_directive_rejects(text: str, needle: str) -> None:
    with pytest.raises(DirectiveError) as info:
        parse_directive(text)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_directive_never_evaluates_code() -> None:
    with pytest.raises(DirectiveError):
        parse_directive("__import__('os').system('echo pwned')")
    with pytest.raises(DirectiveError):
        parse_directive('{"training": __import__("os")}')


# ---------------------------------------------------------------- voting


def test_vote_majority_and_ties() -> None:
    a, b, c = [[1]], [[2]], [[3, 3]]
    assert ag.vote([a, b, b, None, c]) == b
    assert ag.vote([a, b, b, a, c]) == a  # tie -> first occurrence
    assert ag.vote([c, a, b]) == c
    assert ag.vote([None, None]) is None
    assert ag.vote([]) is None
    assert ag.vote([[[1, 2], [3]], a]) == a  # invalid grids are ignored
    assert ag.rank_predictions([a, b, b]) == [(b, 2), (a, 1)]


def test_vote_after_inverting_augmented_views() -> None:
    truth = [[1, 2, 3], [4, 5, 6]]
    names = ["identity", "rotate90", "flip_vertical", "upscale2"]
    preds = [ag.apply_augmentation(n, truth) for n in names]
    preds[1] = [[9]]  # one wrong view
    preds.append(None)  # one unparsable view
    names.append("transpose")
    inverted = [ag.invert_prediction(n, p) for n, p in zip(names, preds, strict=True)]
    assert ag.vote(inverted) == truth


# ---------------------------------------------------------------- bundled data


def test_load_bundled_arc_tasks() -> None:
    train = ag.load_arc_tasks(
        DATA / "arc-agi_training_challenges_filtered_1B_training_set.json",
        DATA / "arc-agi_training_solutions_filtered_1B_training_set.json",
    )
    evals = ag.load_arc_tasks(
        DATA / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json",
        DATA / "arc-agi_evaluation_solutions_filtered_1B_eval_set.json",
    )
    assert len(train) == 12
    assert len(evals) == 10
    for task in train + evals:
        assert task.train and task.test_inputs
        assert len(task.test_outputs) == len(task.test_inputs)
        assert all(set(p) == {"input", "output"} for p in task.train)
    assert not {t.task_id for t in train} & {t.task_id for t in evals}
    assert (DATA / "README.md").is_file()


def test_load_arc_tasks_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ag.load_arc_tasks(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json.*top level"):
        ag.load_arc_tasks(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        ag.load_arc_tasks(bad)
    bad.write_text(json.dumps({"t1": {"train": [{"input": [[1]]}], "test": []}}))
    with pytest.raises(ValueError, match="'output'"):
        ag.load_arc_tasks(bad)
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps({"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}})
    )
    sol = tmp_path / "sol.json"
    sol.write_text(json.dumps({"t2": [[[4]]]}))
    with pytest.raises(ValueError, match="sol.json.*t1"):
        ag.load_arc_tasks(good, sol)
    sol.write_text(json.dumps({"t1": [[[4]], [[5]]]}))
    with pytest.raises(ValueError, match="one per test input"):
        ag.load_arc_tasks(good, sol)
    sol.write_text(json.dumps({"t1": [[[4]]]}))
    (task,) = ag.load_arc_tasks(good, sol)
    assert task == ag.ArcTask("t1", [{"input": [[1]], "output": [[2]]}], [[[3]]], [[[4]]])
    assert ag.load_arc_tasks(good)[0].test_outputs == []
