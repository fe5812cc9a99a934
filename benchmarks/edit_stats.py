"""What a teacher's edits look like, beside their scores: length, copying, repetition, and content carried over
from other passages (a teacher trained on some passages may write their facts into edits of new ones).

    python benchmarks/edit_stats.py runs/pair-edits/untrained.json runs/pair-edits/trained.json \\
        [--foreign orchestrator/data/squad/edits_qwen2.5-7b_train.json] [--out results.json]

Each file is a SEAL-format edits file (``title``, ``context``, ``completions``), as `teacher_edits.py` and the
bundled data write them. Per file, over every non-empty edit (means, and the standard error over passages):
- ``words``: edit length in words; ``empty``: share of edits with no text;
- ``copied``: share of the edit's word 4-grams that occur in its own passage (verbatim copying);
- ``novel_words``: share of the edit's (lower-cased) words absent from its passage and its title;
- ``distinct_3grams``: distinct word 3-grams / all 3-grams within the edit (low: the edit repeats itself);
- ``foreign``: share of the edit's 4-grams that occur in one of the ``--foreign`` passages (e.g. the passages a
  trained teacher was updated on) but not in its own passage: facts carried over from elsewhere.

    python benchmarks/edit_stats.py --kept runs/mean6-seed0 [--round 0] [--out results.json]

``--kept RUN_DIR``: what the run's keep rule (``algorithm.keep``) selected among its training edits of one
round, against the edits it did not keep, passage by passage: per statistic, the mean over passages of (kept
edits' mean - the other edits' mean) ± standard error, and the within-passage correlation of each statistic
with the reward (both centred on their passage's mean). A difference near zero says the kept edits do not
differ in that form: there is nothing of it for the teacher to learn from them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def completions(entry: dict) -> list[str]:
    c = entry["completions"]
    return json.loads(c) if isinstance(c, str) else list(c)


def edit_facts(
    edit: str, vocab: set[str], own4: set[tuple[str, ...]], foreign: set[tuple[str, ...]]
) -> dict[str, float] | None:
    """The statistics of one edit against its passage's words and title (``vocab``) and its word 4-grams
    (``own4``); None for an empty edit."""
    ws = words(edit)
    if not ws:
        return None
    e4, e3 = ngrams(ws, 4), ngrams(ws, 3)
    return {
        "words": float(len(ws)),
        "copied": sum(g in own4 for g in e4) / len(e4) if e4 else 0.0,
        "novel_words": sum(w not in vocab for w in ws) / len(ws),
        "distinct_3grams": len(set(e3)) / len(e3) if e3 else 1.0,
        "foreign": sum(g in foreign and g not in own4 for g in e4) / len(e4) if e4 else 0.0,
    }


def file_stats(entries: list[dict], foreign: set[tuple[str, ...]]) -> dict[str, object]:
    """Per statistic: the mean over passages of the passage's mean over its edits, and its standard error."""
    per_passage: list[dict[str, float]] = []
    n_edits = n_empty = 0
    for entry in entries:
        facts = []
        own = words(entry["context"])  # once per passage, for all its edits
        vocab, own4 = set(own) | set(words(entry.get("title", ""))), set(ngrams(own, 4))
        for text in completions(entry):
            n_edits += 1
            f = edit_facts(text, vocab, own4, foreign)
            if f is None:
                n_empty += 1
            else:
                facts.append(f)
        if facts:
            per_passage.append({k: statistics.fmean(f[k] for f in facts) for k in facts[0]})
    out: dict[str, object] = {"passages": len(entries), "edits": n_edits, "empty": n_empty / max(n_edits, 1)}
    for key in per_passage[0] if per_passage else []:
        values = [p[key] for p in per_passage]
        sem = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        out[key] = {"mean": statistics.fmean(values), "sem": sem}
    return out


def kept_stats(run_dir: Path, round_index: int) -> dict[str, object]:
    """Kept vs not-kept training edits of ``round_index`` of a run (see the module docstring)."""
    from core.config import load_config
    from core.records import EditResult
    from core.stats import mean_sem
    from orchestrator.algorithms.rest_em import select_edits
    from orchestrator.rundir import RunDir
    from orchestrator.tasks import build_task

    cfg = load_config(str(run_dir / "config.yaml"))
    path = run_dir / "edits" / f"round_{round_index}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--kept {run_dir}: no {path.name} (did round {round_index} finish scoring?)")
    train = [r for r in RunDir(run_dir, writer=False).edits(round_index) if not r.heldout]
    kept = {id(r) for r in select_edits(train, cfg.algorithm.keep, cfg.algorithm.threshold)}
    contexts = {c.id: c for c in build_task(cfg.task).train_contexts()}
    by_context: dict[str, list[EditResult]] = {}
    for r in train:
        by_context.setdefault(r.edit.context_id, []).append(r)
    diffs: dict[str, list[float]] = {}
    centred: dict[str, list[tuple[float, float]]] = {}
    for cid, group in sorted(by_context.items()):
        ctx = contexts[cid]
        own = words(ctx.text)
        vocab, own4 = set(own) | set(words(ctx.title or "")), set(ngrams(own, 4))
        rows = [(r, f) for r in group if (f := edit_facts(r.edit.text, vocab, own4, set()))]
        if len(rows) < 2:
            continue
        mean_r = statistics.fmean(r.reward for r, _ in rows)
        for key in rows[0][1]:
            if key == "foreign":
                continue
            mean_f = statistics.fmean(f[key] for _, f in rows)
            centred.setdefault(key, []).extend((f[key] - mean_f, r.reward - mean_r) for r, f in rows)
            a = [f[key] for r, f in rows if id(r) in kept]
            b = [f[key] for r, f in rows if id(r) not in kept]
            if a and b:
                diffs.setdefault(key, []).append(statistics.fmean(a) - statistics.fmean(b))
    out: dict[str, object] = {
        "run": str(run_dir),
        "round": round_index,
        "keep": cfg.algorithm.keep,
        "edits": len(train),
        "kept": len(kept),
    }
    for key, values in diffs.items():
        xs, ys = zip(*centred[key])
        mean, sem = mean_sem(values)
        out[key] = {
            "kept_minus_rest": mean,
            "sem": sem,
            "passages": len(values),
            "within_passage_r": statistics.correlation(xs, ys) if len(set(xs)) > 1 else 0.0,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="SEAL-format edits files")
    ap.add_argument("--kept", metavar="RUN_DIR", help="kept vs not-kept edits of a run's round (see above)")
    ap.add_argument("--round", type=int, default=0, help="the round of --kept")
    ap.add_argument("--foreign", nargs="*", default=[], help="files whose passages count as foreign content")
    ap.add_argument("--out", help="write the statistics here (JSON)")
    args = ap.parse_args(argv)
    if args.kept:
        result = kept_stats(Path(args.kept), args.round)
        print(
            f"{args.kept} round {args.round}: {result['kept']} of {result['edits']} edits kept ({result['keep']})"
        )
        for key, v in result.items():
            if isinstance(v, dict):
                print(
                    f"{key:<16} kept - rest {v['kept_minus_rest']:+8.3f} ± {v['sem']:.3f} over "
                    f"{v['passages']} passages; within-passage r with reward {v['within_passage_r']:+.2f}"
                )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
        return
    if not args.files:
        ap.error("name edits files, or --kept RUN_DIR")
    foreign: set[tuple[str, ...]] = set()
    for path in args.foreign:
        for entry in json.loads(Path(path).read_text()):
            foreign.update(ngrams(words(entry["context"]), 4))
    result = {
        "foreign_files": args.foreign,
        "files": {p: file_stats(json.loads(Path(p).read_text()), foreign) for p in args.files},
    }
    keys = ("words", "copied", "novel_words", "distinct_3grams", "foreign")
    print(f"{'file':<40} {'edits':>5} {'empty':>6} " + " ".join(f"{k:>17}" for k in keys))
    for path, s in result["files"].items():
        cells = " ".join(
            f"{s[k]['mean']:>9.3f} ± {s[k]['sem']:<5.3f}" if k in s else f"{'-':>17}" for k in keys
        )
        print(f"{Path(path).name:<40} {s['edits']:>5} {s['empty']:>6.2f} {cells}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
