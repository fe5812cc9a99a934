"""Where the time of a `teachedit eval` goes, from its directory: the teacher writing its edits, and each
student's updates (the seconds every update record carries), measured so far and, for a run still going or
stopped early, projected to the planned number of updates from each student's measured mean.

    python benchmarks/eval_timing.py runs/eval_target_40x5x2 [--out benchmarks/results/eval_target.json]

The real-models speed issue's target is `teachedit eval configs/real_cpu.yaml` on 40 passages x 5 edits x 2
real students in <= 60 min on 2 cores; the last line printed is `eval_minutes: <total> (<measured|projected>)`.
Times come from the files' modification times (request.json: start; teacher_edits.json: the teacher done;
updates.jsonl: the last record) and the update records' own seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from orchestrator.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def timing(eval_dir: Path) -> dict:
    request = json.loads((eval_dir / "request.json").read_text())
    config = (eval_dir / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(config)
    students = [s["name"] for s in cfg["students"]]
    start = (eval_dir / "request.json").stat().st_mtime
    rows = [json.loads(x) for x in (eval_dir / "updates.jsonl").read_text().splitlines() if x.strip()]
    last = (eval_dir / "updates.jsonl").stat().st_mtime
    teacher_file = eval_dir / "teacher_edits.json"
    teacher_s = teacher_file.stat().st_mtime - start if teacher_file.is_file() else 0.0
    passages = max(len({cid for r in rows for cid in r["context_ids"]}), request["limit"] or 0)
    k = request["k"]  # 0: every edit of a file (the count is then only known from the records)
    per_passage = {"passage": 1, "teacher": k, "edits": k * len(request["edits"])}
    planned_per_student = passages * sum(per_passage.get(s, 0) for s in request["sources"])
    per_student = {}
    remaining_s = 0.0
    for name in students:
        secs = [r["seconds"] for r in rows if r["student"] == name and r["source"] != "base"]
        done = len(secs)
        mean = statistics.fmean(secs) if secs else None
        left = max(0, planned_per_student - done) if k else 0
        if left and mean is not None:
            remaining_s += left * mean
        per_student[name] = {
            "updates_done": done,
            "updates_planned": planned_per_student,
            "update_seconds_sum": sum(secs),
            "update_seconds_mean": mean,
        }
    complete = all(v["updates_done"] >= planned_per_student for v in per_student.values())
    unmeasured = [n for n, v in per_student.items() if v["update_seconds_mean"] is None]
    measured_wall = last - start
    return {
        "eval_dir": str(eval_dir),
        "request": {k: request[k] for k in ("limit", "k", "sources", "protocol")},
        "students": per_student,
        "teacher_seconds": teacher_s,
        "measured_wall_seconds": measured_wall,
        "projected_remaining_seconds": remaining_s,
        "complete": complete,
        "unmeasured_students": unmeasured,
        "total_minutes": (measured_wall + remaining_s) / 60,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--out", help="write the figures (with provenance) to this JSON file")
    args = ap.parse_args(argv)
    t = timing(args.eval_dir)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**t, "provenance": provenance()}, indent=2) + "\n")
    print(f"teacher: {t['teacher_seconds'] / 60:.1f} min")
    for name, s in t["students"].items():
        mean = s["update_seconds_mean"]
        print(
            f"{name}: {s['updates_done']}/{s['updates_planned']} updates, "
            + (
                f"{mean:.2f} s each, {s['update_seconds_sum'] / 60:.1f} min"
                if mean is not None
                else "none yet"
            )
        )
    kind = "measured" if t["complete"] else "projected"
    if t["unmeasured_students"]:
        kind += f"; {', '.join(t['unmeasured_students'])} not measured yet"
    print(f"eval_minutes: {t['total_minutes']:.1f} ({kind})")


if __name__ == "__main__":
    main()
