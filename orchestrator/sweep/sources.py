"""The sweep's rows: the ``sweep`` section's checks, edit sources (the passage, SEAL-format edit files, teacher
checkpoints and the rounds of a ``teachedit run``), the teachers' edits (written once, cached as SEAL-format
files under ``edits/``), and a teacher run trained against one pool first (held-out transfer)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import Config, ConfigError, ModelConfig, load_config
from core.records import Context
from orchestrator.protocols.data import seal_records
from orchestrator.rundir import RunDir, RunDirError
from orchestrator.sweep.cells import contexts_digest, digest, file_digest
from student.lifecycle import free_memory

log = logging.getLogger(__name__)

PROTOCOLS = ("single", "cpt")
DISTILL = "distill"  # the name of the distillation row


@dataclass(frozen=True)
class SweepSource:
    """One row of the sweep. ``kind``: passage | edits (a file) | teacher (a checkpoint writes edits) | distill.
    ``path``: the edits file or teacher folder (None: the config's teacher). ``digest`` identifies the content."""

    name: str
    kind: str
    path: str | None = None
    digest: str = ""


def check_sweep(cfg: Config) -> None:
    """The sweep section's own rules (the rest of the config is validated on load)."""
    s = cfg.sweep
    names = [st.name for st in cfg.students]
    if not active_sources(cfg) and not s.distill.enabled and s.teacher_run is None:
        raise ConfigError("sweep.sources: list at least one source, e.g. sweep.sources.passage=passage")
    for name, spec in active_sources(cfg).items():
        _check_source(f"sweep.sources.{name}", name, spec)
    if s.distill.enabled:
        _check_source("sweep.distill.teacher", DISTILL, s.distill.teacher, teacher_only=True)
        if not 0 <= s.distill.beta <= 1 or not 0 <= s.distill.lmbda <= 1:
            raise ConfigError("sweep.distill.beta and sweep.distill.lmbda must be in [0, 1]")
        if s.distill.trainer_args:
            from core import trl_args
            from student.distill import gkd_config_class, gold_config_class

            trl_args.check(gkd_config_class(), s.distill.trainer_args, "sweep.distill.trainer_args")
            if s.distill.cross_tokenizer == "gold":
                trl_args.check(
                    gold_config_class(), s.distill.trainer_args, "sweep.distill.trainer_args (GOLDConfig)"
                )
    unknown = [n for n in s.students if n not in names]
    if unknown:
        raise ConfigError(f"sweep.students: {unknown} are not in students ({names})")
    bad = [p for p in s.protocols if p not in PROTOCOLS]
    if bad or not s.protocols:
        raise ConfigError(f"sweep.protocols: {bad or '(empty)'}; choose from {list(PROTOCOLS)}")
    if s.limit < 0 or s.cpt_n < 1 or s.k < 0:
        raise ConfigError("sweep.limit must be >= 0 (0: all), sweep.cpt_n >= 1, sweep.k >= 0 (0: all)")
    if s.name is not None and (not s.name or "/" in s.name or s.name in (".", "..")):
        raise ConfigError("sweep.name: a directory name without '/'")
    _check_pools(cfg, names)


def active_sources(cfg: Config) -> dict[str, str]:
    """``sweep.sources`` without the entries set to null."""
    return {n: spec for n, spec in cfg.sweep.sources.items() if spec is not None}


def _check_source(where: str, name: str, spec: str, teacher_only: bool = False) -> None:
    kind, _, path = spec.partition(":")
    kinds = ("teacher",) if teacher_only else ("passage", "teacher", "edits")
    if kind not in kinds or (kind == "passage" and path) or (kind == "edits" and not path):
        forms = (
            "'teacher' | 'teacher:DIR'"
            if teacher_only
            else "'passage' | 'teacher' | 'teacher:DIR' | 'edits:FILE'"
        )
        raise ConfigError(f"{where}={spec!r}: use {forms}")
    if name in ("base", DISTILL) and not teacher_only:
        raise ConfigError(f"{where}: '{name}' is a reserved row name; rename the source")
    if path and not Path(path).exists():
        raise ConfigError(f"{where}: {path} does not exist")


def _check_pools(cfg: Config, names: list[str]) -> None:
    s = cfg.sweep
    for pool, members in s.pools.items():
        missing = [m for m in members if m not in names]
        if missing or not members:
            raise ConfigError(f"sweep.pools.{pool}: {missing or '(empty)'} are not students ({names})")
    if s.teacher_pool is not None and s.teacher_pool not in s.pools:
        raise ConfigError(f"sweep.teacher_pool={s.teacher_pool!r} is not a key of sweep.pools")
    if s.teacher_run is not None and s.teacher_pool is None and not Path(s.teacher_run).is_dir():
        raise ConfigError(
            f"sweep.teacher_run={s.teacher_run} does not exist; set sweep.teacher_pool to train it first"
        )


class Sources:
    """The rows of one sweep and the teachers behind them (their folders resolved, their edits cached)."""

    def __init__(self, cfg: Config, task: Any, rd: RunDir, device: torch.device):
        self.cfg, self.task, self.rd, self.device = cfg, task, rd, device
        self._teacher_path: str | None = None
        self._edits: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, str]]] = {}

    def teacher_path(self) -> str:
        """The config's teacher, built if it is a tiny spec."""
        from orchestrator.models import resolve_model_path

        if self._teacher_path is None:
            self._teacher_path = resolve_model_path(
                self.cfg.teacher.model, "teacher", self.task, self.cfg.run.cache_dir
            )
        return self._teacher_path

    def rows(self) -> list[SweepSource]:
        """Rows in config order: sweep.sources, the rounds of sweep.teacher_run, then distill."""
        out = [self.source(n, spec) for n, spec in active_sources(self.cfg).items()]
        if self.cfg.sweep.teacher_run is not None:
            run = Path(self.cfg.sweep.teacher_run)
            rounds = sorted((run / "teacher").glob("round_*"), key=lambda p: int(p.name.split("_")[1]))
            if not rounds:
                raise RunDirError(f"{run}: no teacher/round_k checkpoint; is it a finished `teachedit run`?")
            out += [self.source(f"{run.name}/{p.name}", f"teacher:{p}") for p in rounds]
        if self.cfg.sweep.distill.enabled:
            t = self.source(DISTILL, self.cfg.sweep.distill.teacher)
            d = digest([t.digest, dataclasses.asdict(self.cfg.sweep.distill)])
            out.append(SweepSource(DISTILL, DISTILL, t.path, d))
        return out

    def source(self, name: str, spec: str) -> SweepSource:
        """The row of ``sweep.sources.<name>: spec``, its content digested."""
        kind, _, path = spec.partition(":")
        if kind == "passage":
            return SweepSource(name, "passage", None, "passage")
        if kind == "edits":
            return SweepSource(name, "edits", path, file_digest(path))
        folder = path or self.teacher_path()
        t = self.cfg.teacher
        d = digest(
            [file_digest(folder), t.prompt_format, t.use_chat_template, dataclasses.asdict(t.generation)]
        )
        return SweepSource(name, "teacher", path or None, d)

    def teacher_mc(self, path: str) -> ModelConfig:
        """The teacher's model settings, loading the folder ``path``."""
        from orchestrator.models import checkpoint_model

        return checkpoint_model(self.cfg.teacher.model, path)

    def load_teacher(self, src: SweepSource) -> Any:
        from orchestrator.models import build_teacher

        path = src.path or self.teacher_path()
        return build_teacher(self.cfg, self.task, self.device, path)[0]

    def teacher_edits(
        self, src: SweepSource, contexts: list[Context]
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """A teacher source's edits and prompts per passage: read from ``edits/``, or written by the teacher
        (``teacher.generation.num_edits`` per passage) and saved there in SEAL format."""
        key = digest([src.digest, contexts_digest(contexts), self.cfg.run.seed])[:16]
        if key in self._edits:
            return self._edits[key]
        name = f"edits/teacher-{key}.json"  # by content: the distill row reuses its teacher source's edits
        file = self.rd.path / name
        if file.is_file():
            records = json.loads(file.read_text())
        else:
            records = self._write_teacher_edits(src, contexts, name)
        texts = {c.id: tuple(r["completions"]) for c, r in zip(contexts, records)}
        prompts = {c.id: r["prompt"] for c, r in zip(contexts, records)}
        self._edits[key] = (texts, prompts)
        return self._edits[key]

    def _write_teacher_edits(self, src: SweepSource, contexts: list[Context], name: str) -> list[dict]:
        teacher = self.load_teacher(src)
        log.info("teacher %s writes %d edits per passage", src.name, self.cfg.teacher.generation.num_edits)
        edits = teacher.propose(contexts, 0, seed=self.cfg.run.seed, progress=self.cfg.run.progress)
        texts: dict[str, tuple[str, ...]] = {}
        for e in sorted(edits, key=lambda e: (e.context_id, e.sample_index)):
            texts[e.context_id] = texts.get(e.context_id, ()) + (e.text,)
        records = seal_records(contexts, texts, {c.id: teacher.prompt(c) for c in contexts})
        (self.rd.path / "edits").mkdir(exist_ok=True)
        self.rd.write_json(name, records)
        del teacher
        free_memory(collect=True)
        return records


def ensure_teacher_run(cfg: Config) -> None:
    """If ``sweep.teacher_run`` is missing or unfinished and ``sweep.teacher_pool`` is set, train it with this
    config's task and algorithm against that pool's students only (``teachedit run``; resumed if
    interrupted). If it exists, check that its students are that pool's."""
    s = cfg.sweep
    if s.teacher_run is None:
        return
    run = Path(s.teacher_run)
    if s.teacher_pool is None:
        return
    pool = s.pools[s.teacher_pool]
    if (run / "config.yaml").is_file():
        trained = [st.name for st in load_config(run / "config.yaml").students]
        if sorted(trained) != sorted(pool):
            raise ConfigError(
                f"sweep.teacher_run={run} was trained against {trained}, but sweep.pools.{s.teacher_pool} "
                f"lists {pool}; fix the pool or point teacher_run at another directory"
            )
    if _finished(run, cfg):
        return
    from orchestrator.runner import Runner

    if (run / "config.yaml").is_file():
        runner = Runner.resume(run)
    else:
        sub = copy.deepcopy(cfg)
        sub.students = [st for st in cfg.students if st.name in pool]
        sub.run.name, sub.run.output_dir, sub.run.overwrite = run.name, str(run.parent), False
        runner = Runner.new(sub)
    log.info("training the teacher against pool %s (%s) in %s", s.teacher_pool, ", ".join(pool), run)
    runner.run()


def _finished(run: Path, cfg: Config) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return False
    rounds = load_config(run / "config.yaml").algorithm.rounds
    return sum(1 for line in metrics.read_text().splitlines() if line.strip()) >= rounds + 1
