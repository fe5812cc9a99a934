"""Experiment tracking (``run.report_to``): every TRL trainer of a run and the round metrics go to the same
trackers, as one tracker run named ``run.name``.

- ``tensorboard``: event files under ``<run dir>/tensorboard/``: ``rounds/`` (one point per round, step = round)
  and one folder per trainer (``teacher_round_<k>``: TRL's own logs through transformers'
  ``TensorBoardCallback``, pointed at the run directory instead of the trainer's temporary folder).
- ``wandb``: one W&B run (its id kept in ``<run dir>/tracking.json`` so ``--resume`` continues it); the
  trainers' ``WandbCallback`` finds it active and logs into it; round metrics are logged against a ``round``
  step metric. ``WANDB_PROJECT`` (default ``teachedit``) and ``WANDB_MODE`` (e.g. ``offline``) apply.
- ``trackio``: one Trackio run (``project`` = ``TRACKIO_PROJECT`` or ``teachedit``, ``name`` = ``run.name``,
  resumed by name); local-first, as Trackio is.

The default, ``none``, writes nothing but ``metrics.jsonl``. Only the main process reports (under a launcher,
rank 0). A tracker that is not installed is a :class:`core.config.ConfigError` before the run starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.config import ConfigError
from orchestrator.rundir import RunDir

log = logging.getLogger(__name__)

PROJECT = "teachedit"


def check_report_to(report_to: Sequence[str], where: str = "run.report_to") -> None:
    """Refuse trackers that are not installed (the values themselves are checked by ``config.validate``)."""
    for name in report_to:
        if name != "none" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"{where}: {name} is not installed: pip install {name} (or set {where}=[none])")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``a/b/c`` keys (booleans, strings and NaN left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class Tracker:
    """The run's trackers. :meth:`trainer_settings` gives a TRL trainer its ``report_to``/``run_name`` and
    callbacks; :meth:`log_round` logs one line of ``metrics.jsonl``; :meth:`close` flushes."""

    def __init__(
        self,
        report_to: Sequence[str],
        rundir: RunDir,
        name: str,
        config: Mapping[str, Any] | None = None,
        active: bool = True,
    ):
        self.names = [v for v in report_to if v != "none"] if active else []
        self.rundir = rundir
        self.run_dir = rundir.path
        self.name = name
        self._rounds_writer: Any = None  # TensorBoard: round metrics
        self._wandb: Any = None
        self._trackio: Any = None
        if "wandb" in self.names:
            self._init_wandb(dict(config or {}))
        if "trackio" in self.names:
            self._init_trackio(dict(config or {}))

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    def _init_wandb(self, config: dict[str, Any]) -> None:
        import wandb

        state = self.run_dir / "tracking.json"  # the W&B run id, so --resume continues the same run
        run_id = json.loads(state.read_text())["wandb_id"] if state.is_file() else wandb.util.generate_id()
        self.rundir.write_json(state.name, {"wandb_id": run_id})
        self._wandb = wandb
        wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=self.name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            config=config,
        )
        wandb.define_metric("round")
        wandb.define_metric("round/*", step_metric="round")

    def _init_trackio(self, config: dict[str, Any]) -> None:
        import trackio

        self._trackio = trackio
        self._trackio_project = os.environ.get("TRACKIO_PROJECT", PROJECT)
        trackio.init(project=self._trackio_project, name=self.name, config=config, resume="allow")

    def trainer_settings(self, label: str) -> tuple[dict[str, Any], list[Any]]:
        """TRL config fields and callbacks for one trainer (``label``: e.g. ``teacher_round_0``). TensorBoard
        goes through our own ``TensorBoardCallback`` so its events land in the run directory; W&B and Trackio
        through TRL's ``report_to`` (their callbacks join the run this tracker opened)."""
        if not self.names:
            return {"report_to": "none"}, []
        others = [n for n in self.names if n != "tensorboard"]
        fields: dict[str, Any] = {"report_to": others or "none", "run_name": self.name}
        if "trackio" in others:
            fields["project"] = self._trackio_project
        callbacks: list[Any] = []
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(SummaryWriter(str(self.run_dir / "tensorboard" / label))))
        return fields, callbacks

    def log_round(self, round_index: int, metrics: Mapping[str, Any]) -> None:
        """One round's metrics (a ``metrics.jsonl`` line), step = round."""
        if not self.names:
            return
        values = {f"round/{k}": v for k, v in flatten(metrics).items() if k != "round"}
        if "tensorboard" in self.names:
            if self._rounds_writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._rounds_writer = SummaryWriter(str(self.run_dir / "tensorboard" / "rounds"))
            for key, value in values.items():
                self._rounds_writer.add_scalar(key, value, round_index)
            self._rounds_writer.flush()
        if self._wandb is not None:
            self._wandb.log({**values, "round": round_index})
        if self._trackio is not None:
            # TRL's TrackioCallback finishes the run at the end of each training; resume it by name.
            self._trackio.init(project=self._trackio_project, name=self.name, resume="allow")
            self._trackio.log({**values, "round": round_index})

    def close(self) -> None:
        if self._rounds_writer is not None:
            self._rounds_writer.close()
            self._rounds_writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._trackio is not None:
            try:
                self._trackio.finish()
            except Exception as exc:  # already finished by a trainer's callback
                log.debug("trackio.finish: %s", exc)
            self._trackio = None


NO_TRACKER = Tracker([], RunDir(Path("."), writer=False), "none", active=False)
