"""One tiny run end to end through the CLI: the run directory holds everything the README promises."""

from __future__ import annotations

import json

from orchestrator.cli import main

from .conftest import CACHE, CONFIGS


def test_cli_run_writes_the_run_directory(tmp_path, capsys):
    rc = main(
        [
            "run",
            str(CONFIGS / "smoke.yaml"),
            f"run.output_dir={tmp_path}",
            f"run.cache_dir={CACHE}",
            "run.name=e2e",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| round |" in out and "wall time" in out
    run = tmp_path / "e2e"
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "reward_curve.png", "run.log"]:
        assert (run / name).is_file(), name
    assert (run / "teacher" / "round_1" / "model.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "rest_em"
    assert [s["model_type"] for s in summary["students"]] == ["llama", "gpt2"]
    assert all(s["num_parameters"] > 0 for s in summary["students"])
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        for key in ["mean_reward", "heldout_mean_reward", "kept", "seconds", "per_student"]:
            assert key in r
        assert set(r["per_student"]) == {"llama-t", "gpt2-t"}
        assert set(r["per_student"]["llama-t"]) >= {"baseline", "adapted", "reward"}
    # Every edit is recorded with per-student scores, and its reward is the mean of the students' gains.
    for k in (0, 1):
        lines = [json.loads(x) for x in (run / "edits" / f"round_{k}.jsonl").read_text().splitlines()]
        assert len(lines) == (3 + 2) * 2  # (train + held-out contexts) x 2 edits
        for rec in lines:
            gains = []
            for o in rec["per_student"].values():
                if o["adapted"] is None:
                    assert o["reward"] == 0.0 and o["error"]
                    gains.append(0.0)
                else:
                    gains.append(o["adapted"]["em"] - o["baseline"]["em"])
                    assert abs(o["reward"] - gains[-1]) < 1e-9
            assert abs(rec["reward"] - sum(gains) / len(gains)) < 1e-9


def test_existing_run_directory_is_refused_without_overwrite(tmp_path, capsys):
    args = [
        "run",
        str(CONFIGS / "smoke.yaml"),
        f"run.output_dir={tmp_path}",
        f"run.cache_dir={CACHE}",
        "run.name=twice",
        "run.overwrite=false",
        "algorithm.rounds=0",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
