"""ARC grids and the few-shot protocol of SEAL (Self-Adapting Language Models, Zweiger et al., 2025).

Protocol, in the order a run uses it:

1. A task (:class:`ArcTask`, see :func:`load_arc_tasks`) has a few ``train`` pairs ``{"input", "output"}``
   of grids (at most 30x30, colours 0-9) and one or more test inputs.
2. The teacher writes a *directive* (a self-edit): a JSON object choosing augmentation families and
   test-time-training hyper-parameters. :func:`parse_directive` reads it with ``json.loads`` only,
   validates it against SEAL's schema, and raises :class:`DirectiveError` naming every problem.
3. Training data for the student: :func:`leave_one_out` turns the ``n`` train pairs into ``n`` tasks
   (``n - 1`` demonstrations and one held-out query); :func:`augment_pairs` applies one transform of
   each enabled family (``basic``, ``size``, ``chained``, ``repeated``) to every input *and* output
   of a task, so the underlying rule is kept.
4. At test time the student predicts each augmented view of the test input; every prediction is
   parsed (:func:`text_to_grid`), mapped back with the transform's inverse (:func:`invert_prediction`)
   and the views are combined by majority :func:`vote`.

Grids are rendered as text independently of any tokenizer: one row per line, one digit per cell
(:func:`grid_to_text`). Everything here is pure Python; no torch.

Family ``chained`` follows the original test-time-training code that SEAL builds on: a basic
(dihedral) transform followed by a 2x upscale. Two dihedral transforms alone would compose to a
single ``basic`` transform, i.e. add no new views.
"""

from __future__ import annotations

import json
import math
import numbers
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import ARC_VIEWS

Grid = list[list[int]]
Pair = dict[str, Grid]

MAX_SIDE = 30
NUM_COLOURS = 10
_DIGITS = frozenset("0123456789")

__all__ = [
    "AUGMENTATIONS",
    "FAMILIES",
    "ArcTask",
    "Directive",
    "DirectiveError",
    "Grid",
    "Pair",
    "anti_transpose",
    "apply_augmentation",
    "augment_pairs",
    "downscale",
    "family_augmentations",
    "flip_horizontal",
    "flip_vertical",
    "grid_to_text",
    "identity",
    "invert_augmentation",
    "invert_permutation",
    "invert_prediction",
    "inverse_of",
    "leave_one_out",
    "load_arc_tasks",
    "parse_directive",
    "permute_colours",
    "random_colour_permutation",
    "rank_predictions",
    "repeat",
    "rotate90",
    "rotate180",
    "rotate270",
    "text_to_grid",
    "tile",
    "transpose",
    "untile",
    "upscale",
    "validate_grid",
    "vote",
]


# --------------------------------------------------------------------------------------------------
# Grids


def validate_grid(grid: Any) -> Grid:
    """Return a fresh list-of-lists copy of ``grid``; ValueError if it is not a valid ARC grid."""
    if hasattr(grid, "tolist") and not isinstance(grid, (list, tuple)):
        grid = grid.tolist()  # numpy arrays
    if not isinstance(grid, (list, tuple)):
        raise ValueError(f"grid must be a list of rows, got {type(grid).__name__}")
    if len(grid) == 0:
        raise ValueError("grid is empty (no rows)")
    width = None
    out: Grid = []
    for r, row in enumerate(grid):
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"grid row {r} must be a list of ints, got {type(row).__name__}")
        if len(row) == 0:
            raise ValueError(f"grid row {r} is empty")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"grid is not rectangular: row 0 has {width} cells but row {r} has {len(row)}")
        new_row = []
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"grid cell ({r}, {c}) must be an int 0-9, got {type(v).__name__} {v!r}")
            if not 0 <= v < NUM_COLOURS:
                raise ValueError(f"grid cell ({r}, {c}) = {v} is outside the colour range 0-9")
            new_row.append(int(v))
        out.append(new_row)
    assert width is not None
    if len(out) > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"grid is {len(out)}x{width}; ARC grids are at most {MAX_SIDE}x{MAX_SIDE}")
    return out


def grid_to_text(grid: Grid) -> str:
    """Render a grid as rows of digits, one row per line (``[[0,1,2],[3,4,0]]`` -> ``"012\\n340"``)."""
    return "\n".join("".join(str(v) for v in row) for row in validate_grid(grid))


def _parse_row(line: str) -> list[int] | None:
    s = line.strip()
    if not s:
        return None
    if all(ch in _DIGITS for ch in s):
        return [int(ch) for ch in s]
    tokens = s.replace(",", " ").split()  # also accept "0 1 2" / "0,1,2"
    if tokens and all(len(t) == 1 and t in _DIGITS for t in tokens):
        return [int(t) for t in tokens]
    return None


def text_to_grid(text: str) -> Grid | None:
    """Parse the first grid (consecutive lines of digits) in model output; None if absent or invalid."""
    if not isinstance(text, str):
        return None
    rows: Grid = []
    for line in text.splitlines():
        row = _parse_row(line)
        if row is not None:
            rows.append(row)
        elif rows:
            break
    if not rows:
        return None
    try:
        return validate_grid(rows)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Geometric transforms (the dihedral group of the square)


def identity(grid: Grid) -> Grid:
    """Return a copy of ``grid``."""
    return validate_grid(grid)


def rotate90(grid: Grid) -> Grid:
    """Rotate 90 degrees clockwise."""
    return [list(row) for row in zip(*validate_grid(grid)[::-1], strict=True)]


def rotate180(grid: Grid) -> Grid:
    """Rotate 180 degrees."""
    return [row[::-1] for row in validate_grid(grid)[::-1]]


def rotate270(grid: Grid) -> Grid:
    """Rotate 270 degrees clockwise (90 counter-clockwise)."""
    return [list(row) for row in zip(*validate_grid(grid), strict=True)][::-1]


def flip_horizontal(grid: Grid) -> Grid:
    """Mirror left-right (reverse every row)."""
    return [row[::-1] for row in validate_grid(grid)]


def flip_vertical(grid: Grid) -> Grid:
    """Mirror top-bottom (reverse the row order)."""
    return validate_grid(grid)[::-1]


def transpose(grid: Grid) -> Grid:
    """Reflect across the main diagonal."""
    return [list(row) for row in zip(*validate_grid(grid), strict=True)]


def anti_transpose(grid: Grid) -> Grid:
    """Reflect across the anti-diagonal."""
    return [list(row)[::-1] for row in zip(*validate_grid(grid), strict=True)][::-1]


# --------------------------------------------------------------------------------------------------
# Colour permutations


def _check_perm(perm: Sequence[int]) -> list[int]:
    p = list(perm)
    if len(p) != NUM_COLOURS or sorted(p) != list(range(NUM_COLOURS)) or any(isinstance(v, bool) for v in p):
        raise ValueError(f"perm must be a permutation of 0-9 (10 ints), got {p!r}")
    return [int(v) for v in p]


def permute_colours(grid: Grid, perm: Sequence[int], keep_background: bool = True) -> Grid:
    """Map every colour ``c`` to ``perm[c]``; with ``keep_background`` the perm must fix 0."""
    p = _check_perm(perm)
    if keep_background and p[0] != 0:
        raise ValueError(f"perm maps background 0 to {p[0]}; pass keep_background=False to allow it")
    return [[p[v] for v in row] for row in validate_grid(grid)]


def invert_permutation(perm: Sequence[int]) -> list[int]:
    """Inverse colour permutation: ``permute_colours(permute_colours(g, p), invert_permutation(p)) == g``."""
    p = _check_perm(perm)
    inv = [0] * NUM_COLOURS
    for src, dst in enumerate(p):
        inv[dst] = src
    return inv


def random_colour_permutation(rng: random.Random, keep_background: bool = True) -> list[int]:
    """A random permutation of 0-9 (fixing 0 when ``keep_background``)."""
    if keep_background:
        rest = list(range(1, NUM_COLOURS))
        rng.shuffle(rest)
        return [0, *rest]
    perm = list(range(NUM_COLOURS))
    rng.shuffle(perm)
    return perm


# --------------------------------------------------------------------------------------------------
# Size and repetition transforms


def _factors(factor: int | tuple[int, int]) -> tuple[int, int]:
    pair = (factor, factor) if isinstance(factor, numbers.Integral) else factor
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2
    if not ok or any(isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 1 for f in pair):
        raise ValueError(f"scale factor must be an int >= 1 or a (rows, cols) pair of them, got {factor!r}")
    return int(pair[0]), int(pair[1])


def upscale(grid: Grid, factor: int | tuple[int, int]) -> Grid:
    """Blow every cell up to a ``factor`` block; ``factor`` is an int or ``(rows, cols)``."""
    fy, fx = _factors(factor)
    return validate_grid(
        [[v for v in row for _ in range(fx)] for row in validate_grid(grid) for _ in range(fy)]
    )


def downscale(grid: Grid, factor: int | tuple[int, int], strict: bool = True) -> Grid:
    """Inverse of :func:`upscale`; with ``strict`` every block must be one colour (else ValueError)."""
    fy, fx = _factors(factor)
    g = validate_grid(grid)
    h, w = len(g), len(g[0])
    if h % fy or w % fx:
        raise ValueError(f"cannot downscale a {h}x{w} grid by ({fy}, {fx}): sides not divisible")
    out = [[g[r][c] for c in range(0, w, fx)] for r in range(0, h, fy)]
    if strict and upscale(out, (fy, fx)) != g:
        raise ValueError(f"cannot downscale by ({fy}, {fx}): some {fy}x{fx} blocks are not a single colour")
    return out


def tile(grid: Grid, nx: int, ny: int) -> Grid:
    """Repeat the grid ``nx`` times side by side and ``ny`` times top to bottom."""
    if isinstance(nx, bool) or isinstance(ny, bool) or nx < 1 or ny < 1:
        raise ValueError(f"tile counts must be ints >= 1, got nx={nx!r}, ny={ny!r}")
    g = validate_grid(grid)
    return validate_grid([row * nx for _ in range(ny) for row in g])


repeat = tile


def untile(grid: Grid, nx: int, ny: int, strict: bool = True) -> Grid:
    """Inverse of :func:`tile`: the top-left block; with ``strict`` all copies must agree."""
    if isinstance(nx, bool) or isinstance(ny, bool) or nx < 1 or ny < 1:
        raise ValueError(f"tile counts must be ints >= 1, got nx={nx!r}, ny={ny!r}")
    g = validate_grid(grid)
    h, w = len(g), len(g[0])
    if h % ny or w % nx:
        raise ValueError(f"cannot untile a {h}x{w} grid into {ny} x {nx} copies: sides not divisible")
    out = [row[: w // nx] for row in g[: h // ny]]
    if strict and tile(out, nx, ny) != g:
        raise ValueError(f"cannot untile: the {ny} x {nx} copies are not identical")
    return out


# --------------------------------------------------------------------------------------------------
# Registry of named augmentations and their inverses


def _scale(fy: int, fx: int) -> Callable[[Grid], Grid]:
    return lambda g: upscale(g, (fy, fx))


def _unscale(fy: int, fx: int) -> Callable[[Grid], Grid]:
    return lambda g: downscale(g, (fy, fx))


def _tile(nx: int, ny: int) -> Callable[[Grid], Grid]:
    return lambda g: tile(g, nx, ny)


def _untile(nx: int, ny: int) -> Callable[[Grid], Grid]:
    return lambda g: untile(g, nx, ny)


#: name -> transform. A name may also be a chain ``"a+b"`` (apply ``a`` then ``b``).
# The views' names are core.config.ARC_VIEWS (what task.arc.views may list), in this order.
AUGMENTATIONS: dict[str, Callable[[Grid], Grid]] = dict(
    zip(
        ARC_VIEWS,
        [
            identity,
            rotate90,
            rotate180,
            rotate270,
            flip_horizontal,
            flip_vertical,
            transpose,
            anti_transpose,
            _scale(2, 2),
            _scale(2, 1),
            _scale(1, 2),
            _unscale(2, 2),
            _unscale(2, 1),
            _unscale(1, 2),
            _tile(2, 1),
            _tile(1, 2),
            _tile(2, 2),
            _untile(2, 1),
            _untile(1, 2),
            _untile(2, 2),
        ],
        strict=True,
    )
)

_INVERSES: dict[str, str] = {
    "identity": "identity",
    "rotate90": "rotate270",
    "rotate180": "rotate180",
    "flip_horizontal": "flip_horizontal",
    "flip_vertical": "flip_vertical",
    "transpose": "transpose",
    "anti_transpose": "anti_transpose",
    "upscale2": "downscale2",
    "upscale_height2": "downscale_height2",
    "upscale_width2": "downscale_width2",
    "tile_horizontal2": "untile_horizontal2",
    "tile_vertical2": "untile_vertical2",
    "tile_both2": "untile_both2",
}
_INVERSES.update({v: k for k, v in list(_INVERSES.items())})

_BASIC = ARC_VIEWS[1:8]  # rotate90 ... anti_transpose: the dihedral group without the identity

#: SEAL's augmentation families -> the named transforms each contributes.
FAMILIES: dict[str, tuple[str, ...]] = {
    "basic": _BASIC,
    "size": ("upscale2", "upscale_height2", "upscale_width2"),
    "chained": tuple(f"{b}+upscale2" for b in _BASIC),
    "repeated": ("tile_horizontal2", "tile_vertical2", "tile_both2"),
}


def _steps(name: str) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"augmentation name must be a non-empty string, got {name!r}")
    steps = name.split("+")
    unknown = [s for s in steps if s not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {unknown[0]!r} in {name!r}; known: {', '.join(AUGMENTATIONS)}"
        )
    return steps


def family_augmentations(family: str) -> list[str]:
    """Names of the transforms in an augmentation family (ValueError if unknown)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown augmentation family {family!r}; known: {', '.join(FAMILIES)}")
    return list(FAMILIES[family])


def inverse_of(name: str) -> str:
    """Name of the transform undoing ``name`` (chains are inverted in reverse order)."""
    return "+".join(_INVERSES[s] for s in reversed(_steps(name)))


def apply_augmentation(name: str, grid: Grid) -> Grid:
    """Apply a named transform (or chain ``"a+b"``); ValueError if unknown or the result is invalid."""
    g = validate_grid(grid)
    for step in _steps(name):
        g = AUGMENTATIONS[step](g)
    return g


def invert_augmentation(name: str, grid: Grid) -> Grid:
    """Undo a named transform; ValueError if ``grid`` cannot be an output of it (e.g. odd size)."""
    return apply_augmentation(inverse_of(name), grid)


def invert_prediction(name: str, grid: Grid | None) -> Grid | None:
    """Like :func:`invert_augmentation` but returns None for a missing or non-invertible prediction."""
    if grid is None:
        return None
    try:
        return invert_augmentation(name, grid)
    except ValueError:
        return None


def _check_pairs(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Mapping) or "input" not in pair:
            raise ValueError(
                f"pairs[{i}] must be a dict with 'input' (and usually 'output'), got {pair!r:.80}"
            )
        out = dict(pair)
        for key in ("input", "output"):
            if key in pair:
                try:
                    out[key] = validate_grid(pair[key])
                except ValueError as exc:
                    raise ValueError(f"pairs[{i}].{key}: {exc}") from None
        checked.append(out)
    return checked


def _map_pair(name: str, pair: dict[str, Any]) -> Pair:
    out = dict(pair)
    for key in ("input", "output"):
        if key in pair:
            out[key] = apply_augmentation(name, pair[key])
    return out


def augment_pairs(
    pairs: Sequence[Mapping[str, Any]],
    families: Sequence[str],
    rng: random.Random,
    max_per_family: int | None = None,
) -> list[tuple[str, list[Pair]]]:
    """Apply each chosen transform to every input and output of ``pairs``.

    For each family (in order, duplicates ignored), transforms whose results would be invalid (e.g.
    over 30x30) are skipped; if more than ``max_per_family`` remain, ``rng`` samples that many.
    Returns ``(augmentation_name, transformed_pairs)`` per transform, in registry order per family.
    """
    if max_per_family is not None and (isinstance(max_per_family, bool) or max_per_family < 0):
        raise ValueError(f"max_per_family must be None or an int >= 0, got {max_per_family!r}")
    checked = _check_pairs(pairs)
    results: list[tuple[str, list[Pair]]] = []
    for family in dict.fromkeys(families):
        views: list[tuple[str, list[Pair]]] = []
        for name in family_augmentations(family):
            try:
                views.append((name, [_map_pair(name, p) for p in checked]))
            except ValueError:
                continue  # e.g. the result would exceed 30x30
        if max_per_family is not None and len(views) > max_per_family:
            keep = sorted(rng.sample(range(len(views)), max_per_family))
            views = [views[i] for i in keep]
        results.extend(views)
    return results


# --------------------------------------------------------------------------------------------------
# Leave-one-out tasks and voting


def leave_one_out(train_pairs: Sequence[Pair]) -> list[tuple[list[Pair], Pair]]:
    """For ``n >= 2`` pairs, ``n`` tasks of (the other ``n - 1`` pairs as demos, one query pair)."""
    pairs = list(train_pairs)
    if len(pairs) < 2:
        return []
    return [(pairs[:i] + pairs[i + 1 :], pairs[i]) for i in range(len(pairs))]


def rank_predictions(predictions: Sequence[Grid | None]) -> list[tuple[Grid, int]]:
    """Distinct valid grids with their vote counts, most votes first, ties by first occurrence."""
    counts: dict[tuple[tuple[int, ...], ...], int] = {}
    for pred in predictions:
        if pred is None:
            continue
        try:
            key = tuple(tuple(row) for row in validate_grid(pred))
        except ValueError:
            continue
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(enumerate(counts.items()), key=lambda item: (-item[1][1], item[0]))
    return [([list(row) for row in key], n) for _, (key, n) in ranked]


def vote(predictions: Sequence[Grid | None]) -> Grid | None:
    """Majority grid over (already inverted) predictions; ties go to the first seen; None if none valid."""
    ranked = rank_predictions(predictions)
    return ranked[0][0] if ranked else None


# --------------------------------------------------------------------------------------------------
# Teacher directives (SEAL's self-edit schema)


class DirectiveError(ValueError):
    """A teacher directive that cannot be used; the message says what to fix."""


#: data_generation key -> family name.
DIRECTIVE_FAMILY_KEYS: dict[str, str] = {
    "use_basic_augmentations": "basic",
    "use_size_augmentations": "size",
    "use_chain_augmentations": "chained",
    "use_repeat_augmentations": "repeated",
}
STRATEGIES: tuple[str, ...] = ("train_using_all_tokens", "train_using_output_tokens")
LEARNING_RATE_RANGE: tuple[float, float] = (1e-6, 1e-2)
EPOCHS_RANGE: tuple[int, int] = (1, 20)
_TRAINING_KEYS = ("strategy", "learning_rate", "num_train_epochs")


@dataclass(frozen=True)
class Directive:
    """A validated teacher directive: which augmentation families to use and how to train."""

    use_basic_augmentations: bool
    use_size_augmentations: bool
    use_chain_augmentations: bool
    use_repeat_augmentations: bool
    strategy: str
    learning_rate: float
    num_train_epochs: int

    @property
    def families(self) -> list[str]:
        """Enabled family names, in the order ``basic, size, chained, repeated``."""
        return [fam for key, fam in DIRECTIVE_FAMILY_KEYS.items() if getattr(self, key)]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The directive in SEAL's nested JSON shape."""
        return {
            "data_generation": {key: getattr(self, key) for key in DIRECTIVE_FAMILY_KEYS},
            "training": {key: getattr(self, key) for key in _TRAINING_KEYS},
        }

    def to_json(self) -> str:
        """Serialise to JSON that :func:`parse_directive` accepts."""
        return json.dumps(self.to_dict())


def _no_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in items:
        if key in obj:
            raise DirectiveError(f"invalid JSON: duplicate key {key!r}")
        obj[key] = value
    return obj


def _loads(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DirectiveError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise DirectiveError("invalid JSON: nested too deeply") from None


def _balanced_blocks(text: str) -> list[str]:
    """Top-level balanced ``{...}`` substrings, respecting JSON string literals."""
    blocks: list[str] = []
    depth, start, in_str, escape = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


def _extract_object(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        raise DirectiveError("invalid JSON: the directive is empty; expected a JSON object {...}")
    try:
        return _loads(stripped)  # the whole text is JSON (object or not)
    except DirectiveError as whole_error:
        blocks = _balanced_blocks(text)
        if not blocks:
            if "{" in text:
                raise DirectiveError("invalid JSON: unbalanced braces, the '{' is never closed") from None
            raise DirectiveError(f"{whole_error}; no JSON object {{...}} found in the text") from None
        first_error: DirectiveError | None = None
        for block in blocks:
            try:
                return _loads(block)
            except DirectiveError as exc:
                first_error = first_error or exc
        assert first_error is not None
        raise first_error from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {json.dumps(v)[:40]}"


def parse_directive(text: str) -> Directive:
    """Parse and validate a teacher's JSON directive (``json.loads`` only; never eval).

    The first balanced ``{...}`` object is extracted from surrounding prose. Raises
    :class:`DirectiveError` listing every problem found.
    """
    if not isinstance(text, str):
        raise DirectiveError(f"directive must be a string of JSON text, got {type(text).__name__}")
    obj = _extract_object(text)
    if not isinstance(obj, dict):
        raise DirectiveError(f"directive must be a JSON object {{...}}, got {_describe(obj)}")

    problems: list[str] = []
    for key in obj:
        if key not in ("data_generation", "training"):
            problems.append(f"unknown key {key!r} at top level (allowed: data_generation, training)")
    sections: dict[str, dict[str, Any]] = {}
    for section in ("data_generation", "training"):
        value = obj.get(section)
        if section not in obj:
            problems.append(f"missing key {section!r}")
        elif not isinstance(value, dict):
            problems.append(f"{section!r} must be a JSON object, got {_describe(value)}")
        else:
            sections[section] = value

    fields: dict[str, Any] = {}
    data = sections.get("data_generation")
    if data is not None:
        for key in data:
            if key in DIRECTIVE_FAMILY_KEYS:
                continue
            if key.startswith("use_"):
                problems.append(
                    f"unknown augmentation family {key!r} in data_generation "
                    f"(allowed: {', '.join(DIRECTIVE_FAMILY_KEYS)})"
                )
            else:
                problems.append(
                    f"unknown key {key!r} in data_generation (allowed: {', '.join(DIRECTIVE_FAMILY_KEYS)})"
                )
        for key in DIRECTIVE_FAMILY_KEYS:
            if key not in data:
                problems.append(f"missing key 'data_generation.{key}' (true or false)")
            elif not isinstance(data[key], bool):
                problems.append(
                    f"data_generation.{key} must be a boolean true/false, got {_describe(data[key])}"
                )
            else:
                fields[key] = data[key]

    train = sections.get("training")
    if train is not None:
        for key in train:
            if key not in _TRAINING_KEYS:
                problems.append(f"unknown key {key!r} in training (allowed: {', '.join(_TRAINING_KEYS)})")
        for key in _TRAINING_KEYS:
            if key not in train:
                problems.append(f"missing key 'training.{key}'")
        if "strategy" in train:
            v = train["strategy"]
            if not isinstance(v, str) or v not in STRATEGIES:
                problems.append(
                    f"training.strategy must be one of {', '.join(STRATEGIES)}; got {_describe(v)}"
                )
            else:
                fields["strategy"] = v
        if "learning_rate" in train:
            v = train["learning_rate"]
            lo, hi = LEARNING_RATE_RANGE
            if not _is_number(v):
                problems.append(f"training.learning_rate must be a number, got {_describe(v)}")
            elif not (math.isfinite(v) and lo <= v <= hi):
                problems.append(f"training.learning_rate={v!r} is out of range [{lo:g}, {hi:g}]")
            else:
                fields["learning_rate"] = float(v)
        if "num_train_epochs" in train:
            v = train["num_train_epochs"]
            lo, hi = EPOCHS_RANGE
            if not isinstance(v, int) or isinstance(v, bool):
                problems.append(f"training.num_train_epochs must be an integer, got {_describe(v)}")
            elif not lo <= v <= hi:
                problems.append(f"training.num_train_epochs={v} is out of range [{lo}, {hi}]")
            else:
                fields["num_train_epochs"] = v

    if problems:
        raise DirectiveError("invalid directive: " + "; ".join(problems))
    return Directive(**fields)


# --------------------------------------------------------------------------------------------------
# Loading ARC task files


@dataclass
class ArcTask:
    """One ARC task: demonstration pairs, test inputs and (when known) their expected outputs."""

    task_id: str
    train: list[Pair]
    test_inputs: list[Grid]
    test_outputs: list[Grid] = field(default_factory=list)


def _read_json(path: Path, expected: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"ARC file not found: {path} (expected {expected})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {expected}") from None


def _grid_at(value: Any, path: Path, where: str) -> Grid:
    try:
        return validate_grid(value)
    except ValueError as exc:
        raise ValueError(f"{path}: {where} is not a valid grid: {exc}") from None


def load_arc_tasks(challenges_path: str | Path, solutions_path: str | Path | None = None) -> list[ArcTask]:
    """Load ARC-AGI challenge (and solution) JSON files into tasks, in file order.

    Challenges: ``{task_id: {"train": [{"input", "output"}...], "test": [{"input"}...]}}``; solutions:
    ``{task_id: [grid per test input]}``. FileNotFoundError / ValueError name the path and the problem.
    """
    cpath = Path(challenges_path)
    challenges_shape = (
        '{task_id: {"train": [{"input": grid, "output": grid}, ...], "test": [{"input": grid}, ...]}}'
    )
    challenges = _read_json(cpath, challenges_shape)
    if not isinstance(challenges, dict):
        raise ValueError(f"{cpath}: top level must be an object {challenges_shape}")
    solutions: dict[str, Any] | None = None
    spath = Path(solutions_path) if solutions_path is not None else None
    if spath is not None:
        solutions_shape = "{task_id: [output grid for each test input, ...]}"
        solutions = _read_json(spath, solutions_shape)
        if not isinstance(solutions, dict):
            raise ValueError(f"{spath}: top level must be an object {solutions_shape}")
        missing = [t for t in challenges if t not in solutions]
        if missing:
            raise ValueError(f"{spath}: no solutions for task(s) {', '.join(missing[:5])} from {cpath}")

    tasks: list[ArcTask] = []
    for task_id, task in challenges.items():
        if (
            not isinstance(task, dict)
            or not isinstance(task.get("train"), list)
            or not isinstance(task.get("test"), list)
        ):
            raise ValueError(f"{cpath}: task {task_id!r} must be an object with 'train' and 'test' lists")
        train: list[Pair] = []
        for i, pair in enumerate(task["train"]):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise ValueError(f"{cpath}: task {task_id!r} train[{i}] must have 'input' and 'output'")
            train.append(
                {
                    "input": _grid_at(pair["input"], cpath, f"task {task_id!r} train[{i}].input"),
                    "output": _grid_at(pair["output"], cpath, f"task {task_id!r} train[{i}].output"),
                }
            )
        test_inputs: list[Grid] = []
        for i, pair in enumerate(task["test"]):
            if not isinstance(pair, dict) or "input" not in pair:
                raise ValueError(f"{cpath}: task {task_id!r} test[{i}] must have 'input'")
            test_inputs.append(_grid_at(pair["input"], cpath, f"task {task_id!r} test[{i}].input"))
        test_outputs: list[Grid] = []
        if solutions is not None and spath is not None:
            sol = solutions[task_id]
            if not isinstance(sol, list) or len(sol) != len(test_inputs):
                raise ValueError(
                    f"{spath}: task {task_id!r} must list {len(test_inputs)} output grid(s), one per test input"
                )
            test_outputs = [_grid_at(g, spath, f"task {task_id!r} solution[{i}]") for i, g in enumerate(sol)]
        tasks.append(
            ArcTask(task_id=str(task_id), train=train, test_inputs=test_inputs, test_outputs=test_outputs)
        )
    return tasks
