"""Runs an experiment: builds the task and the roles, repeats the algorithm's rounds, persists and reports."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config, load_config, to_yaml
from core.distributed import is_main, launched, on_rank0, ranks_missing
from core.models import resolve_device
from core.records import json_safe
from orchestrator.algorithms import ALGORITHMS, RoundReport, RunContext
from orchestrator.models import build_pool, build_teacher, prebuild_tiny_models
from orchestrator.preflight import preflight
from orchestrator.provenance import provenance, yaml_header
from orchestrator.rundir import INTERRUPTED, RunDir, RunDirError
from orchestrator.signals import Preempted
from orchestrator.tasks import build_task
from orchestrator.tracking import Tracker

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Runner:
    """Owns one run directory. ``run()`` executes the remaining rounds and returns the summary."""

    def __init__(
        self,
        cfg: Config,
        rundir: RunDir,
        progress: bool | None = None,
        task: Any = None,
        created: bool = False,
        saved_rounds: int | None = None,
    ):
        self.cfg = cfg
        self.rundir = rundir
        self.progress = cfg.run.progress if progress is None else progress
        self.task = task  # built by preflight, or at the start of run()
        # This process created the directory: if the run stops before it records anything (a model that
        # cannot load, a signal while loading), the directory is removed, so a refusal leaves nothing behind.
        self.created = created
        # ``algorithm.rounds`` as the run directory's config.yaml has it (a resumed run may override it).
        self.saved_rounds = saved_rounds

    @classmethod
    def new(cls, cfg: Config) -> Runner:
        task = preflight(cfg)  # bad data or model paths fail here, before a run directory exists

        def create() -> Path:
            rundir = RunDir.create(Path(cfg.run.output_dir) / cfg.run.name, overwrite=cfg.run.overwrite)
            rundir.write_text("config.yaml", yaml_header() + to_yaml(cfg))
            return rundir.path

        # Under a launcher rank 0 creates the directory (its error, if any, stops every rank); only it writes.
        return cls(cfg, RunDir(on_rank0(create), writer=is_main()), task=task, created=True)

    @classmethod
    def resume(cls, path: str | Path, overrides: list[str] | None = None) -> Runner:
        path = Path(path)

        def read() -> tuple[Config, int]:
            if not (path / "config.yaml").is_file():
                raise FileNotFoundError(f"{path} is not a run directory (no config.yaml); nothing to resume")
            saved = load_config(path / "config.yaml")
            return load_config(path / "config.yaml", overrides), saved.algorithm.rounds

        cfg, saved_rounds = on_rank0(read)
        task = preflight(cfg)
        return cls(cfg, RunDir(path, writer=is_main()), task=task, saved_rounds=saved_rounds)

    def completed_rounds(self) -> list[dict[str, Any]]:
        return self.rundir.read_jsonl("metrics.jsonl")

    def run(self) -> dict[str, Any]:
        """Execute the remaining rounds, holding the run directory's lock throughout. SIGTERM/SIGINT (inside
        :func:`orchestrator.signals.graceful`, as the CLI runs it) abandon the record in flight, write
        ``interrupted.json`` with the command that resumes the run, and raise :class:`Preempted`."""
        on_rank0(self.rundir.acquire_lock)  # a second writer is refused before it touches anything
        try:
            on_rank0(self.rundir.remove_partial_writes)  # *.tmp files and checkpoint folders of a killed run
            on_rank0(lambda: (self.rundir.path / INTERRUPTED).unlink(missing_ok=True))
            on_rank0(self._change_rounds)
            return self._run()
        except Preempted as exc:
            self._abandon(exc)
            raise
        except BaseException:
            self._remove_if_empty()
            raise
        finally:
            if is_main():
                self.rundir.release_lock()

    def _change_rounds(self) -> None:
        """A resumed run given another ``algorithm.rounds``. Raising it on a finished run whose algorithm
        ``reopens_final_round`` (ReST-EM) reopens the final round (scored, but trained on nothing since it was
        the last) as a training round: its scored records are kept, its metrics line is dropped, and the
        resumed run selects from those records, trains the teacher and goes on, to the records of a run
        created with the new count. Lowering it below the
        rounds already scored is refused. The new count is written to config.yaml, so a later ``--resume``
        without the override continues the same run."""
        old, new = self.saved_rounds, self.cfg.algorithm.rounds
        if old is None or old == new:
            return
        rounds = self.completed_rounds()
        if new < len(rounds):
            raise RunDirError(
                f"{self.rundir.path} has scored rounds 0..{len(rounds) - 1} (it was created with "
                f"algorithm.rounds={old}); algorithm.rounds={new} would end before them. Resume with "
                f"algorithm.rounds >= {len(rounds)} to add rounds, or without the override."
            )
        if len(rounds) == old + 1:  # finished: round ``old`` was scored as the final round
            if not getattr(ALGORITHMS[self.cfg.algorithm.name], "reopens_final_round", False):
                raise RunDirError(
                    f"{self.rundir.path} is a finished {self.cfg.algorithm.name} run: its final round scored "
                    "samples that a training round would not, so it cannot be reopened. Start a new run "
                    f"from its last teacher (teacher.model.path={self.rundir.teacher_dir(old)})."
                )
            # metrics.jsonl before config.yaml: a kill between the two leaves a finished run (old count, last
            # round to score again from its kept records) that plain --resume restores, never a damaged one.
            lines = (self.rundir.path / "metrics.jsonl").read_text().splitlines(keepends=True)
            self.rundir.write_text("metrics.jsonl", "".join(lines[: len(rounds) - 1]))  # the lines as written
            log.info(
                "algorithm.rounds %d -> %d: round %d, the final round, becomes a training round (its scored "
                "records are kept)",
                old,
                new,
                old,
            )
        self.rundir.write_text("config.yaml", yaml_header() + to_yaml(self.cfg))

    def records_written(self) -> int:
        files = self.rundir.path.glob("edits/*.jsonl")
        return sum(len(self.rundir.read_jsonl(f"edits/{p.name}")) for p in files)

    def _produced_nothing(self) -> bool:
        """Only the config and the empty skeleton: no proposals, records, metrics or checkpoints."""
        p = self.rundir.path
        produced = [*p.glob("edits/*"), *p.glob("teacher/*"), *p.glob("metrics.jsonl")]
        return not produced

    def _remove_if_empty(self) -> bool:
        """A new run that stopped before producing anything leaves no directory (so the same command, fixed,
        runs again without --resume or run.overwrite)."""
        if not (self.created and is_main() and self.rundir.path.is_dir() and self._produced_nothing()):
            return False
        shutil.rmtree(self.rundir.path, ignore_errors=True)
        log.info("removed %s: the run stopped before producing anything", self.rundir.path)
        return True

    def _abandon(self, exc: Preempted) -> None:
        if not is_main() or self._remove_if_empty():
            return
        records = self.records_written()
        command = f"teachedit run --resume {shlex.quote(str(self.rundir.path))}"
        self.rundir.write_json(
            INTERRUPTED,
            {
                "signal": exc.name,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "rounds_completed": len(self.completed_rounds()),
                "records": records,
                "resume": command,
            },
        )
        log.warning("stopped by %s after %d record(s); continue with: %s", exc.name, records, command)

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        seed_everything(cfg.run.seed)
        device = resolve_device(cfg.run.device)
        task = self.task if self.task is not None else build_task(cfg.task)
        if launched():
            prebuild_tiny_models(cfg, task)
        teacher, teacher_path = build_teacher(cfg, task, device)
        pool = build_pool(cfg, task, device)
        ctx = RunContext(
            cfg=cfg,
            task=task,
            teacher=teacher,
            pool=pool,
            rundir=self.rundir,
            progress=self.progress and is_main(),
            initial_teacher=teacher_path,
            tracker=Tracker(
                cfg.run.report_to,
                self.rundir,
                cfg.run.name,
                config=dataclasses.asdict(cfg),
                active=is_main(),
            ),
        )
        algorithm = ALGORITHMS[cfg.algorithm.name]()
        algorithm.setup(ctx)
        done = on_rank0(self.completed_rounds)
        if done:
            log.info("resuming %s after %d completed round(s)", self.rundir.path, len(done))
            self._load_teacher(algorithm, len(done))
        prior = float(sum(r.get("seconds", 0.0) for r in done))
        try:
            for r in range(len(done), cfg.algorithm.rounds + 1):
                report = algorithm.train(r)
                self.rundir.append_jsonl("metrics.jsonl", json_safe(dataclasses.asdict(report)))
                self.write_summary(pool, prior + time.time() - started)
                ctx.tracker.log_round(r, dataclasses.asdict(report))
                log.info(format_round(report, cfg.reward.score))
        finally:
            algorithm.cleanup()
            ctx.tracker.close()
        return self.write_summary(pool, prior + time.time() - started)

    def _load_teacher(self, algorithm: Any, updates: int) -> None:
        """Continue from the teacher after ``updates`` updates. Its checkpoint is written (atomically) before
        the round's metrics line, so a missing one means the run directory was damaged: never silently go
        on with the initial teacher."""
        if updates > self.cfg.algorithm.rounds:
            return  # every round is done; the last one trains no teacher
        if not on_rank0(self.rundir.teacher_dir(updates).is_dir):  # rank 0's view, so all ranks agree
            raise RunDirError(
                f"{self.rundir.path}: metrics.jsonl lists {updates} completed round(s) but the teacher "
                f"checkpoint {self.rundir.teacher_dir(updates)} is missing; restore it, or start a new run."
            )
        missing = ranks_missing(self.rundir.teacher_dir(updates))  # every rank loads the checkpoint itself
        if missing:
            raise RunDirError(
                f"rank(s) {missing} cannot see {self.rundir.teacher_dir(updates)}, which rank 0 wrote: resuming "
                "under a launcher on several nodes needs the run directory on a file system every node shares "
                "(README: Under the DeepSpeed launcher)"
            )
        algorithm.load_checkpoint(updates)

    def write_summary(self, pool: Any, wall: float) -> dict[str, Any]:
        rounds = self.completed_rounds()
        summary = {
            "algorithm": self.cfg.algorithm.name,
            "task": self.cfg.task.name,
            "reward": dataclasses.asdict(self.cfg.reward),
            "teacher": {"prompt_format": self.cfg.teacher.prompt_format},
            "students": pool.describe(),
            "rounds": rounds,
            "wall_seconds": wall,
            "provenance": provenance(),  # of the process that wrote this summary last
        }
        self.rundir.write_json("summary.json", summary)
        if not self.rundir.writer:
            return summary
        try:
            from orchestrator.report import plot_reward_curve

            plot_reward_curve(rounds, self.rundir.path / "reward_curve.png", title=self.cfg.run.name)
        except Exception as exc:  # a plot must never cost the results
            log.warning("could not draw reward_curve.png: %s", exc)
        return summary


def format_round(r: RoundReport, score: str) -> str:
    held = "n/a" if r.heldout_mean_reward is None else f"{r.heldout_mean_reward:+.3f}±{r.heldout_sem:.3f}"
    return (
        f"round {r.round}: mean reward {r.mean_reward:+.3f}, held-out {held}, kept {r.kept}, {r.seconds:.0f}s"
    )


def load_summary(path: str | Path) -> dict[str, Any]:
    with open(Path(path) / "summary.json") as f:
        return json.load(f)
