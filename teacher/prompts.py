"""Edit prompt formats: what the teacher is asked to write for a context.

``implications``, ``rewrite`` and ``self-qa`` are SEAL's SQuAD prompts (Zweiger et al., 2025). ``notes`` is
the open prompt of the synthetic task, where the teacher chooses the style of its edits itself.
Templates are plain ``str.format`` strings with ``{title}`` and ``{context}``; nothing is evaluated.
"""

from __future__ import annotations

from orchestrator.records import Context

PROMPT_FORMATS: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications derived directly or indirectly "
        "from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one separated by a "
        "newline.\n\nPassage:\n{title}\n{context}\n\nRewritten passages:\n"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format, one 'Q: ... A: ...' "
        "pair per line.\n\nPassage:\n{title}\n{context}\n\nQuestions and answers:\n"
    ),
    "notes": "Passage: {context}\nNotes:\n",
}


def register_prompt_format(name: str, template: str) -> None:
    """Add a prompt format (a ``str.format`` template using ``{title}`` and ``{context}``)."""
    if "{context}" not in template:
        raise ValueError(f"prompt format {name!r} must contain '{{context}}'")
    PROMPT_FORMATS[name] = template


def render_prompt(fmt: str, context: Context) -> str:
    if fmt not in PROMPT_FORMATS:
        raise KeyError(f"unknown prompt format {fmt!r}; choose from {sorted(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[fmt].format(title=context.title, context=context.text)
