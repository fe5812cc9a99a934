"""The sweep's numbers and reports: mean gain over the unchanged student per (protocol, source, student), with
the standard error over passages; held-out transfer per student pool; ``sweep.json``, ``sweep.md``,
``heatmap.png``.

A passage's score is the mean over its questions of each question's score averaged over the updates that
answered it (e.g. the k edits of the passage); its gain is that minus the base student's score on the same
passage. The mean and standard error are over passages.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Config
from core.records import Context, json_safe
from core.stats import mean_sem
from orchestrator.protocols.common import UpdateResult
from orchestrator.rundir import RunDir

ATTR = {"gold_logprob": "logprob", "em": "em", "f1": "f1"}  # metric name -> Answer attribute


@dataclass
class Gain:
    mean: float
    se: float  # standard error over passages (0 with one passage)
    n: int  # passages
    per_passage: dict[str, float] = field(default_factory=dict)


def passage_scores(results: list[UpdateResult], metric: str) -> dict[str, float]:
    """``{context_id: score}`` from a cell's counted updates (see the module docstring)."""
    per_q: dict[tuple[str, int], list[float]] = {}
    for r in results:
        if r.counted:
            for a in r.answers:
                per_q.setdefault((a.context_id, a.question_index), []).append(getattr(a, ATTR[metric]))
    per_p: dict[str, list[float]] = {}
    for (cid, _), values in per_q.items():
        per_p.setdefault(cid, []).append(sum(values) / len(values))
    return {cid: sum(v) / len(v) for cid, v in per_p.items()}


def gain(results: list[UpdateResult], base: list[UpdateResult], metric: str) -> Gain:
    """Per-passage gain of a cell over the base cell of the same student."""
    b, x = passage_scores(base, metric), passage_scores(results, metric)
    per = {cid: x[cid] - b[cid] for cid in b if cid in x}
    m, se = mean_sem(list(per.values()))
    return Gain(m, se, len(per), per)


def pool_gain(gains: list[Gain]) -> Gain:
    """A pool's gain: per passage, the mean over the pool's students; then mean and s.e. over passages."""
    ids = [cid for cid in gains[0].per_passage if all(cid in g.per_passage for g in gains)] if gains else []
    per = {cid: sum(g.per_passage[cid] for g in gains) / len(gains) for cid in ids}
    m, se = mean_sem(list(per.values()))
    return Gain(m, se, len(per), per)


# -- assembling -----------------------------------------------------------------------------------------------
def summarize_cells(
    cfg: Config, cells: list[tuple[Any, list[UpdateResult] | None, str | None]]
) -> list[dict]:
    """One entry per (protocol, source, student) with gains in every metric, or the reason it was skipped."""
    base = {c.student: res for c, res, _ in cells if c.protocol == "base"}
    out = []
    for c, res, skip in cells:
        if c.protocol == "base":
            continue
        entry: dict[str, Any] = {
            "protocol": c.protocol,
            "source": c.source,
            "student": c.student,
            "key": c.key,
        }
        if res is None:
            entry["skipped"] = skip
        else:
            entry["gain"] = {m: dataclasses.asdict(gain(res, base[c.student], m)) for m in ATTR}
            entry["n_updates"] = sum(1 for r in res if r.n_items or r.error)
            entry["n_failed"] = sum(1 for r in res if r.error)
        out.append(entry)
    return out


def base_scores(
    cells: list[tuple[Any, list[UpdateResult] | None, str | None]],
) -> dict[str, dict[str, float]]:
    out = {}
    for c, res, _ in cells:
        if c.protocol == "base" and res is not None:
            out[c.student] = {m: mean_sem(list(passage_scores(res, m).values()))[0] for m in ATTR}
    return out


def transfer(cfg: Config, entries: list[dict]) -> list[dict]:
    """Per (protocol, source, pool): the pool's mean gain; sources from ``sweep.teacher_run`` are marked
    in-pool for ``sweep.teacher_pool`` and held-out for the other pools."""
    s = cfg.sweep
    run_prefix = f"{Path(s.teacher_run).name}/" if s.teacher_run else None
    out = []
    keys = list(dict.fromkeys((e["protocol"], e["source"]) for e in entries))
    for protocol, source in keys:
        for pool, members in s.pools.items():
            gains = [
                _gain(e, s.metric)
                for e in entries
                if (e["protocol"], e["source"]) == (protocol, source)
                and e["student"] in members
                and "gain" in e
            ]
            if not gains:
                continue
            role = ""
            if run_prefix and source.startswith(run_prefix) and s.teacher_pool is not None:
                role = "in-pool" if pool == s.teacher_pool else "held-out"
            g = pool_gain(gains)
            out.append(
                {"protocol": protocol, "source": source, "pool": pool, "role": role, "students": len(gains)}
                | {"mean": g.mean, "se": g.se, "n": g.n}
            )
    return out


def _gain(entry: dict, metric: str) -> Gain:
    return Gain(**entry["gain"][metric])


# -- writing ---------------------------------------------------------------------------------------------------
def write_reports(
    cfg: Config,
    rd: RunDir,
    contexts: list[Context],
    sources: list[Any],
    students: list[str],
    cells: list[tuple[Any, list[UpdateResult] | None, str | None]],
) -> str:
    """Write sweep.json, sweep.md and heatmap.png; returns the markdown."""
    entries = summarize_cells(cfg, cells)
    pools = transfer(cfg, entries) if cfg.sweep.pools else []
    report = {
        "metric": cfg.sweep.metric,
        "passages": [c.id for c in contexts],
        "questions": sum(len(c.questions) for c in contexts),
        "protocols": list(cfg.sweep.protocols),
        "students": students,
        "sources": [dataclasses.asdict(s) for s in sources],
        "base": base_scores(cells),
        "cells": entries,
        "pools": dict(cfg.sweep.pools),
        "transfer": pools,
    }
    from orchestrator.provenance import provenance

    rd.write_json("sweep.json", json_safe({**report, "provenance": provenance()}))
    table = markdown(report)
    rd.write_text("sweep.md", table)
    plot_heatmap(report, rd.path / "heatmap.png")
    return table


def _cell(entry: dict | None, metric: str) -> str:
    if entry is None:
        return ""
    if "gain" not in entry:
        return "n/a"
    g = entry["gain"][metric]
    return f"{g['mean']:+.3f} ± {g['se']:.3f}"


def markdown(report: dict) -> str:
    metric, students = report["metric"], report["students"]
    lines = [
        "# teachedit sweep",
        "",
        f"Mean gain in {metric} over the unchanged student (± standard error over "
        f"{len(report['passages'])} passages, {report['questions']} questions).",
    ]
    by = {(e["protocol"], e["source"], e["student"]): e for e in report["cells"]}
    sources = list(dict.fromkeys(e["source"] for e in report["cells"]))
    for protocol in report["protocols"]:
        lines += ["", f"## {protocol}", "", "| source | " + " | ".join(students) + " |"]
        lines.append("|---|" + "---|" * len(students))
        base = [f"{report['base'].get(s, {}).get(metric, math.nan):.3f}" for s in students]
        lines.append("| base (absolute) | " + " | ".join(base) + " |")
        for src in sources:
            cells = [_cell(by.get((protocol, src, s)), metric) for s in students]
            lines.append(f"| {src} | " + " | ".join(cells) + " |")
    skipped: dict[str, list[str]] = {}
    for e in report["cells"]:
        if "skipped" in e and e["student"] not in skipped.setdefault(e["skipped"], []):
            skipped[e["skipped"]].append(e["student"])
    for why, names in skipped.items():
        lines += ["", f"n/a for {', '.join(names)}: {why}."]
    if report["transfer"]:
        lines += _transfer_md(report)
    return "\n".join(lines) + "\n"


def _transfer_md(report: dict) -> list[str]:
    pools = list(report["pools"])
    lines = ["", "## Transfer across student pools", ""]
    lines.append(
        "Pool gain: per passage the mean over the pool's students, then mean ± s.e. over passages. "
        + "; ".join(f"{p}: {', '.join(m)}" for p, m in report["pools"].items())
        + "."
    )
    lines += ["", "| protocol | source | " + " | ".join(pools) + " |", "|---|---|" + "---|" * len(pools)]
    by = {(t["protocol"], t["source"], t["pool"]): t for t in report["transfer"]}
    for protocol, source in dict.fromkeys((t["protocol"], t["source"]) for t in report["transfer"]):
        cells = []
        for p in pools:
            t = by.get((protocol, source, p))
            tag = f" ({t['role']})" if t and t["role"] else ""
            cells.append(f"{t['mean']:+.3f} ± {t['se']:.3f}{tag}" if t else "")
        lines.append(f"| {protocol} | {source} | " + " | ".join(cells) + " |")
    return lines


def plot_heatmap(report: dict, path: Path) -> None:
    """One panel per protocol: sources (rows) x students (columns), colour = mean gain, text = mean ± s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric, students, protocols = report["metric"], report["students"], report["protocols"]
    sources = list(dict.fromkeys(e["source"] for e in report["cells"]))
    by = {(e["protocol"], e["source"], e["student"]): e for e in report["cells"]}
    grids = {}
    for p in protocols:
        m = np.full((len(sources), len(students)), np.nan)
        for i, src in enumerate(sources):
            for j, st in enumerate(students):
                e = by.get((p, src, st))
                if e is not None and "gain" in e and e["gain"][metric]["mean"] is not None:
                    m[i, j] = e["gain"][metric]["mean"]
        grids[p] = m
    finite = [abs(v) for g in grids.values() for v in g.flatten() if np.isfinite(v)]
    lim = max(finite) if finite and max(finite) > 0 else 1.0
    fig, axes = plt.subplots(
        1,
        len(protocols),
        figsize=(1.6 + 1.5 * len(students) * len(protocols), 1.2 + 0.55 * len(sources)),
        dpi=120,
        squeeze=False,
    )
    for ax, p in zip(axes[0], protocols):
        im = ax.imshow(np.ma.masked_invalid(grids[p]), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_facecolor("#dddddd")
        ax.set_xticks(range(len(students)), students, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(sources)), sources if ax is axes[0][0] else [""] * len(sources), fontsize=8)
        ax.set_title(f"{p}: {metric} gain", fontsize=9)
        for i, src in enumerate(sources):
            for j, st in enumerate(students):
                text = _cell(by.get((p, src, st)), metric).replace(" ± ", "\n±")
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, pad=0.02)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
