"""The embedded default must visibly learn: a reduced demo (fewer contexts and rounds, same tiny models)
ends with a higher held-out reward than it started with. The first run builds the default tiny models
(about 2-3 minutes on 2 cores; cached in .cache/teachedit), hence the `slow` marker."""

from __future__ import annotations

import pytest

from core.config import load_config
from orchestrator.runner import Runner

from .conftest import CACHE, CONFIGS


@pytest.mark.slow
def test_reduced_demo_heldout_reward_rises(tmp_path):
    cfg = load_config(
        CONFIGS / "default.yaml",
        [
            f"run.output_dir={tmp_path}",
            f"run.cache_dir={CACHE}",
            "run.progress=false",
            "run.seed=1",
            "task.seed=1",
            "task.num_train_contexts=24",
            "task.num_heldout_contexts=16",
            "algorithm.rounds=2",
        ],
    )
    rounds = Runner.new(cfg).run()["rounds"]
    first, last = rounds[0], rounds[-1]
    assert last["heldout_mean_reward"] > first["heldout_mean_reward"]
    # The teacher moved toward the style students learn from: more full QA edits than at round 0.
    assert last["edit_styles"].get("qa", 0) > first["edit_styles"].get("qa", 0)
