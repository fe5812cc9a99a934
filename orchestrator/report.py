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
