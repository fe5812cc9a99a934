"""How a student is asked a question: the task's base QA prompt, or the student's own chat template.

An instruct model asked with a bare completion prompt often answers nothing (SmolLM2-135M-Instruct emits its
end-of-turn token after ``Question: ... Answer:``). So each student has ``use_chat_template``:

- ``auto`` (default): the chat template when the student's tokenizer has one, else the task's base prompt;
- ``always``: the chat template (an error if the tokenizer has none);
- ``never``: the task's base prompt (SEAL's ``Let's answer a question directly and concisely.`` template for
  SQuAD).

With the chat template the question is rendered as the task's ``qa_messages`` (SQuAD: SEAL's instruct system
prompt and ``Topic: {title}\\n{question}`` as the user turn) followed by the generation prompt; the rendered
text already holds the template's special tokens, so it is tokenized without adding any. The scored answer is
the text the model writes before its end-of-turn token (special tokens are skipped when decoding), and the
gold answer is appended right after the generation prompt.
"""

from __future__ import annotations

from typing import Any

from core.records import Context

MODES = ("auto", "always", "never")


def uses_chat_template(tok: Any, mode: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"use_chat_template={mode!r}; use one of {MODES}")
    has = bool(getattr(tok, "chat_template", None))
    if mode == "always" and not has:
        raise ValueError("use_chat_template=always but the tokenizer has no chat template; use auto or never")
    return mode == "always" or (mode == "auto" and has)


def qa_messages(task: Any, question: str, context: Context | None) -> list[dict[str, str]]:
    return task.qa_messages(question, context)


def render_chat(tok: Any, messages: list[dict[str, str]]) -> str:
    """The chat template applied with the generation prompt. A template that refuses a system turn (e.g.
    Gemma's) gets the system text folded into the first user turn."""
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        if not messages or messages[0]["role"] != "system":
            raise
        system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        return tok.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)


def qa_prompt(task: Any, tok: Any, chat: bool, question: str, context: Context | None) -> str:
    """The text a student is conditioned on for ``question`` (the context itself is never shown)."""
    if chat:
        return render_chat(tok, qa_messages(task, question, context))
    return task.qa_prompt(question, context)


def answer_continuation(prompt: str, answer: str) -> str:
    """The gold answer as the continuation of ``prompt``: after a prompt ending in whitespace (SEAL's
    ``Answer:\\n``, a chat generation prompt) it follows directly, else after one space (``A: Paris``)."""
    answer = answer.strip()
    return answer if not prompt or prompt[-1].isspace() else " " + answer
