"""Edit prompt formats: what the teacher is asked to write for a context.

``implications`` (and its ``-long`` / ``-very-long`` variants), ``rewrite`` and ``self-qa`` are SEAL's SQuAD
base-model prompts, word for word (its ``make_squad_data.py``; Zweiger et al., 2025). ``notes`` is
the open prompt of the synthetic task, where the teacher chooses the style of its edits itself.
``arc-directive`` asks for SEAL's ARC directive (augmentations and training settings) as JSON.
Templates are plain ``str.format`` strings with ``{title}`` and ``{context}``; nothing is evaluated.
"""

from __future__ import annotations

import string

from core.records import Context

PROMPT_FORMATS: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications derived directly or indirectly "
        "from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one separated by a "
        "newline.\n\nPassage:\n{title}\n{context}\n\nRewritten passages:\n"
    ),
    "implications-long": (
        "Let's read the following passage and produce a long list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-very-long": (
        "Let's read the following passage and produce a very long list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    # SEAL's self-qa prompt ends in "Question 1: ": the edit starts with the first question's text (the SQuAD
    # task's SEAL protocol puts the "Question 1: " back when it splits the edit)
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        "Passage:\n{title}\n{context}\n\nQuestion 1: "
    ),
    "notes": "Passage: {context}\nNotes:\n",
    # SEAL's ARC self-edit prompt, shortened so tiny teachers fit it: the task's training pairs, then the
    # schema of the JSON directive (validated by orchestrator.tasks.arc_grids.parse_directive).
    "arc-directive": (
        "{context}\n------\nConfigure test-time training for this ARC task. Answer with one JSON object: "
        '{{"data_generation": {{"use_basic_augmentations", "use_size_augmentations", '
        '"use_chain_augmentations", "use_repeat_augmentations": true or false}}, "training": {{"strategy": '
        '"train_using_all_tokens" or "train_using_output_tokens", "learning_rate": float, '
        '"num_train_epochs": int}}}}\nDirective:\n'
    ),
}


BUILTIN_FORMATS = frozenset(PROMPT_FORMATS)


def register_prompt_format(name: str, template: str) -> None:
    """Add a prompt format: a template whose only placeholders are ``{context}`` (required) and ``{title}``.

    Placeholders are checked with :class:`string.Formatter` before anything is registered: attribute or index
    access (``{context.__class__}``), conversions and format specs are refused, so a template from a config
    can only ever paste the passage and its title. Literal braces are written ``{{`` and ``}}``.
    Redefining a built-in format is refused."""
    if not name or not isinstance(name, str) or ":" in name:
        raise ValueError(f"prompt format name {name!r}: use a non-empty name without ':'")
    if name in BUILTIN_FORMATS and template != PROMPT_FORMATS[name]:
        raise ValueError(f"{name!r} is a built-in prompt format; give yours another name")
    if not isinstance(template, str):
        raise ValueError(f"prompt format {name!r}: the template must be a string")
    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(
            f"prompt format {name!r}: {exc} (write literal braces as '{{{{' and '}}}}')"
        ) from None
    bad = sorted({f for f, conv, spec in fields if f not in ("title", "context") or conv or spec})
    if bad:
        raise ValueError(
            f"prompt format {name!r} uses placeholders {bad}; only {{context}} and {{title}} are allowed "
            "(write literal braces as '{{{{' and '}}}}')"
        )
    if "context" not in {f for f, _, _ in fields}:
        raise ValueError(f"prompt format {name!r} must contain '{{context}}'")
    PROMPT_FORMATS[name] = template


def render_prompt(fmt: str, context: Context) -> str:
    if fmt not in PROMPT_FORMATS:
        raise KeyError(f"unknown prompt format {fmt!r}; choose from {sorted(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[fmt].format(title=context.title, context=context.text)
