"""SEAL's main table on real students, from a `teachedit eval` directory: per (source, student) the no-context
EM, F1 and gold-answer log-prob with standard errors over passages, and each source's paired gain over the
unchanged student (``base``) and over the passage-only update (``passage``), with paired standard errors (the
same passages and questions are scored for every source, so differences are taken per passage first).

    teachedit eval configs/real_cpu.yaml run.progress=false teacher.generation.num_edits=1 \\
        --data orchestrator/data/squad/passages.json --limit 40 --k 1 --name seal_table \\
        --edits orchestrator/data/squad/edits_qwen2.5-7b.json orchestrator/data/squad/edits_gpt4_1.json
    .venv/bin/python benchmarks/seal_table.py runs/seal_table [more eval directories ...]

Reads ``updates.jsonl`` (so a run still in progress, or one that was stopped, is summarised over the updates
it finished: only passages that every source has finished for a student are used) and writes
``benchmarks/results/seal_table.json`` (``--out``) and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.stats import mean_sem
from orchestrator.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("em", "f1", "logprob")
SEAL = {"base": 32.7, "passage": 33.5, "edits_qwen2.5-7b": 39.7, "edits_gpt4_1": 46.3}


def passage_means(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``[source][context_id][metric]``: per passage, the mean over its questions of each question's mean over
    the source's updates (as the eval table averages)."""
    per_q: dict[str, dict[tuple[str, int], list[dict]]] = {}
    for r in records:
        if not r.get("counted", True):
            continue
        for a in r["answers"]:
            per_q.setdefault(r["source"], {}).setdefault((a["context_id"], a["question_index"]), []).append(a)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for source, qs in per_q.items():
        by_ctx: dict[str, list[dict[str, float]]] = {}
        for (cid, _), answers in qs.items():
            by_ctx.setdefault(cid, []).append({m: sum(a[m] for a in answers) / len(answers) for m in METRICS})
        out[source] = {cid: {m: sum(q[m] for q in v) / len(v) for m in METRICS} for cid, v in by_ctx.items()}
    return out


def paired(eval_dir: Path, a: str, b: str) -> dict:
    """Per student: source ``a`` minus source ``b`` per passage (mean ± standard error over the passages both
    finished), for every metric. E.g. a trained teacher's edits against the untrained teacher's."""
    records = [json.loads(line) for line in (eval_dir / "updates.jsonl").read_text().splitlines() if line]
    out = {}
    for student in dict.fromkeys(r["student"] for r in records):
        means = passage_means([r for r in records if r["student"] == student])
        missing = [s for s in (a, b) if s not in means]
        if missing:
            raise SystemExit(
                f"--pair: {eval_dir} has no source {missing} for {student}; it has {sorted(means)}"
            )
        common = sorted(set(means[a]) & set(means[b]))
        row: dict = {"a": a, "b": b, "passages": len(common)}
        for m in METRICS:
            d = [means[a][c][m] - means[b][c][m] for c in common]
            row[m], row[f"{m}_se"] = mean_sem(d)
            row[f"{m}_wins"] = sum(x > 0 for x in d)
        out[student] = row
    return out


def summarise(eval_dir: Path) -> dict:
    records = [json.loads(line) for line in (eval_dir / "updates.jsonl").read_text().splitlines() if line]
    students = list(dict.fromkeys(r["student"] for r in records))
    result: dict = {"eval_dir": str(eval_dir), "students": {}}
    for student in students:
        mine = [r for r in records if r["student"] == student]
        means = passage_means(mine)
        sources = list(means)
        common = sorted(set.intersection(*(set(v) for v in means.values())))
        rows = []
        for source in sources:
            row = {"source": source, "passages": len(common)}
            row["updates"] = sum(1 for r in mine if r["source"] == source and (r["n_items"] or r["error"]))
            row["failed"] = sum(1 for r in mine if r["source"] == source and r["error"])
            for m in METRICS:
                row[m], row[f"{m}_se"] = mean_sem([means[source][c][m] for c in common])
                for ref in ("base", "passage"):
                    if ref in means and source != ref:
                        d = [means[source][c][m] - means[ref][c][m] for c in common]
                        row[f"{m}_vs_{ref}"], row[f"{m}_vs_{ref}_se"] = mean_sem(d)
            rows.append(row)
        result["students"][student] = rows
    return result


def markdown(result: dict) -> str:
    lines = []
    for student, rows in result["students"].items():
        n = rows[0]["passages"] if rows else 0
        lines += [
            f"\n**{student}** ({n} passages; mean ± standard error over passages)\n",
            "| source | EM | F1 | gold log-prob | log-prob gain vs base | vs passage | F1 gain vs base | SEAL (Qwen2.5-7B) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:

            def pm(key: str, r: dict = r) -> str:
                return f"{r[key]:+.3f} ± {r[key + '_se']:.3f}" if key in r else "—"

            seal = SEAL.get(r["source"])
            lines.append(
                f"| {r['source']} | {r['em']:.3f} ± {r['em_se']:.3f} | {r['f1']:.3f} ± {r['f1_se']:.3f} | "
                f"{r['logprob']:.3f} ± {r['logprob_se']:.3f} | {pm('logprob_vs_base')} | "
                f"{pm('logprob_vs_passage')} | {pm('f1_vs_base')} | {seal if seal is not None else '—'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dirs", type=Path, nargs="+", help="one or more `teachedit eval` directories")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seal_table.json"))
    ap.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="also report source A minus source B per passage (paired), e.g. teacher edits_untrained",
    )
    args = ap.parse_args(argv)
    result: dict = {"eval_dirs": [], "students": {}}
    for d in args.eval_dirs:
        part = summarise(d)
        result["eval_dirs"].append(part["eval_dir"])
        result["students"].update(part["students"])
        if args.pair:
            result.setdefault("pairs", {}).update(paired(d, *args.pair))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**result, "provenance": provenance()}, indent=2) + "\n")
    print(markdown(result))
    for student, r in result.get("pairs", {}).items():
        print(
            f"\n{student}: {r['a']} − {r['b']} over {r['passages']} passages: log-prob {r['logprob']:+.3f} ± "
            f"{r['logprob_se']:.3f} (higher on {r['logprob_wins']}), F1 {r['f1']:+.3f} ± {r['f1_se']:.3f}, "
            f"EM {r['em']:+.3f} ± {r['em_se']:.3f}"
        )


if __name__ == "__main__":
    main()
