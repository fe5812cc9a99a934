"""run.report_to: every trainer of a run and the round metrics reach the trackers, as one tracker run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from core.config import ConfigError, load_config
from orchestrator.cli import main
from orchestrator.rundir import RunDir
from orchestrator.tracking import Tracker, check_report_to, flatten

from .conftest import CACHE, CONFIGS


@pytest.mark.parametrize(
    "value, message",
    [("[bogus]", "run.report_to"), ("[none,tensorboard]", "run.report_to")],
)
def test_report_to_values_are_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "smoke.yaml", [f"run.report_to={value}"])


def test_a_tracker_that_is_not_installed_is_refused_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"run.report_to: wandb is not installed: pip install wandb"):
        check_report_to(["wandb"])
    check_report_to(["none"])


def test_flatten_keeps_numeric_leaves():
    flat = flatten(
        {"round": 1, "a": 0.5, "ok": True, "s": "x", "nan": float("nan"), "per": {"st": {"em": 1}}}
    )
    assert flat == {"round": 1.0, "a": 0.5, "per/st/em": 1.0}


def test_default_reports_nowhere(tmp_path):
    tracker = Tracker(["none"], RunDir(tmp_path), "r")
    assert not tracker.enabled
    assert tracker.trainer_settings("teacher_round_0") == ({"report_to": "none"}, [])
    tracker.log_round(0, {"mean_reward": 1.0})
    tracker.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_gets_the_round_metrics_and_the_teacher_trainer_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rc = main(
        [
            "run",
            str(CONFIGS / "smoke.yaml"),
            f"run.output_dir={tmp_path}",
            f"run.cache_dir={CACHE}",
            "run.name=tb",
            "run.report_to=[tensorboard]",
            "algorithm.keep=seal",  # keep an edit per context whatever its reward, so the teacher trains
            "teacher.train.trainer_args={logging_steps: 1}",
        ]
    )
    assert rc == 0
    run = tmp_path / "tb"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = EventAccumulator(str(run / "tensorboard" / "rounds")).Reload()
    for key in ("mean_reward", "heldout_mean_reward", "kept"):
        points = rounds.Scalars(f"round/{key}")
        assert [p.step for p in points] == [m["round"] for m in metrics]
        assert [p.value for p in points] == pytest.approx([m[key] for m in metrics], abs=1e-6)
    student = next(iter(metrics[0]["per_student"]))
    assert rounds.Scalars(f"round/per_student/{student}/reward")
    # The teacher's SFT (TRL's SFTTrainer, round 0 → 1) logged its loss into the run directory.
    trainer = EventAccumulator(str(run / "tensorboard" / "teacher_round_0")).Reload()
    losses = [p.value for p in trainer.Scalars("train/loss")]
    assert losses and all(v > 0 for v in losses)
    assert not (run / "tensorboard" / "teacher_round_1").exists()  # the last round trains no teacher


def test_cli_quiets_model_loading_bars_but_keeps_hub_download_bars(monkeypatch):
    import huggingface_hub.utils
    import transformers

    from orchestrator.cli import _quiet_libraries

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        _quiet_libraries()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert not huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        transformers.utils.logging.enable_progress_bar()
