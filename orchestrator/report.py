"""Reports: the reward curve plot and the per-round table the CLI prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_reward_curve(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Mean training reward and held-out reward (± standard error over contexts) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rounds:
        return
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(xs, [r["mean_reward"] for r in rounds], "o-", label="train contexts (mean)")
    held = [
        (r["round"], r["heldout_mean_reward"], r.get("heldout_sem") or 0.0)
        for r in rounds
        if r.get("heldout_mean_reward") is not None
    ]
    if held:
        hx, hy, he = zip(*held)
        ax.errorbar(hx, hy, yerr=he, fmt="s-", capsize=3, label="held-out contexts (± s.e.)")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("round (teacher updates)")
    ax.set_ylabel("reward")
    ax.set_xticks(xs)
    ax.set_title(title or "reward per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def round_table(summary: dict[str, Any]) -> str:
    """A markdown table: one row per round, held-out reward and per-student scores."""
    rounds = summary.get("rounds", [])
    names = [s["name"] for s in summary.get("students", [])]
    score = summary.get("reward", {}).get("score", "score")
    head = ["round", "mean reward", "held-out reward", "kept", "seconds"] + [
        f"{n} {score} base→adapted" for n in names
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        held = r.get("heldout_mean_reward")
        held_s = "n/a" if held is None else f"{held:+.3f} ± {r.get('heldout_sem') or 0:.3f}"
        cells = [str(r["round"]), f"{r['mean_reward']:+.3f}", held_s, str(r["kept"]), f"{r['seconds']:.0f}"]
        for n in names:
            p = r.get("per_student", {}).get(n, {})
            ad = p.get("adapted")
            cells.append(f"{p.get('baseline', 0):.3f}→{ad:.3f}" if ad is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout_curve(summary: dict[str, Any]) -> list[tuple[int, int, float, float]]:
    """Per round with a held-out score: (round, training student evaluations spent before it, held-out reward,
    standard error). The teacher scored at round r learned from the training evaluations of rounds < r."""
    out, spent = [], 0
    for r in summary.get("rounds", []):
        held = r.get("heldout_mean_reward")
        if held is not None:
            out.append((r["round"], spent, float(held), float(r.get("heldout_sem") or 0.0)))
        spent += int(r.get("train_student_evals", 0))
    return out


def compare_table(summaries: list[dict[str, Any]], labels: list[str]) -> str:
    """A markdown table: per run and round, held-out reward ± s.e. and the student evaluations spent."""
    head = ["run", "algorithm", "round", "held-out reward", "train evals before", "student evals (round)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in zip(labels, summaries):
        evals = {r["round"]: r.get("student_evals", 0) for r in s.get("rounds", [])}
        for rnd, spent, held, sem in heldout_curve(s):
            cells = [label, s.get("algorithm", "?"), str(rnd), f"{held:+.3f} ± {sem:.3f}", str(spent)]
            lines.append("| " + " | ".join(cells + [str(evals.get(rnd, 0))]) + " |")
    lines.append("")
    for label, s in zip(labels, summaries):
        total = sum(r.get("student_evals", 0) for r in s.get("rounds", []))
        lines.append(f"{label}: {total} student evaluations in all, {s.get('wall_seconds', 0):.0f}s")
    return "\n".join(lines)


def plot_comparison(summaries: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    """Held-out reward (± s.e.) of several runs, against the round and against the training student
    evaluations spent before it (the budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    all_rounds: set[int] = set()
    for i, (label, s) in enumerate(zip(labels, summaries)):
        curve = heldout_curve(s)
        if not curve:
            continue
        rounds, spent, held, sem = zip(*curve)
        all_rounds.update(rounds)
        name = f"{label} ({s.get('algorithm', '?')})"
        dodge = (i - (len(summaries) - 1) / 2) * 0.03  # keep error bars of equal rounds apart
        axes[0].errorbar([x + dodge for x in rounds], held, yerr=sem, fmt="o-", capsize=3, label=name)
        axes[1].errorbar(spent, held, yerr=sem, fmt="o-", capsize=3, label=name)
    axes[0].set_xticks(sorted(all_rounds))
    axes[0].set_xlabel("round (teacher updates)")
    axes[1].set_xlabel("training student evaluations spent")
    axes[0].set_ylabel("held-out reward (± s.e. over contexts)")
    for ax in axes:
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    fig.suptitle("held-out reward per round")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
