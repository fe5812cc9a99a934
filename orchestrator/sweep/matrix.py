"""The sweep matrix: students x sources x protocols, cell by cell. A student is loaded once for all its
cells that are not cached; the base cell (the unchanged student) is every gain's reference."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config, StudentConfig, to_yaml
from core.records import Context
from orchestrator.protocols.common import BaseAnswers, Settings, UpdateResult
from orchestrator.protocols.data import Source, load_eval_data
from orchestrator.rundir import RunDir, RunDirError
from orchestrator.sweep.cells import SWEEP_VERSION, Cell, CellCache, contexts_digest, digest, file_digest
from orchestrator.sweep.distill import DistillRow
from orchestrator.sweep.sources import (
    DISTILL,
    Sources,
    SweepSource,
    active_sources,
    check_sweep,
    ensure_teacher_run,
)
from student.lifecycle import free_memory

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    path: Path
    computed: int  # cells computed by this invocation
    reused: int  # cells read from the cache
    seconds: float
    table: str  # the markdown of sweep.md


class Sweep:
    """One sweep directory. ``run()`` computes the missing cells and writes the reports."""

    def __init__(self, cfg: Config, path: Path):
        from core.models import resolve_device
        from orchestrator.tasks import build_task

        self.cfg = cfg
        self.rd = RunDir(path)
        self.device = resolve_device(cfg.run.device)
        self.task = build_task(cfg.task)
        self.computed = 0
        self.reused = 0
        self.sources = Sources(cfg, self.task, self.rd, self.device)
        self.cache = CellCache(self.rd)
        self.distill = DistillRow(cfg, self.sources)

    # ---- inputs
    def teacher_path(self) -> str:
        """The config's teacher, built if it is a tiny spec."""
        return self.sources.teacher_path()

    def students(self) -> list[StudentConfig]:
        """The swept students; a tiny ``tokenizer_from: teacher`` is resolved to the teacher's folder."""
        chosen = self.cfg.sweep.students or [s.name for s in self.cfg.students]
        out = []
        for sc in self.cfg.students:
            if sc.name not in chosen:
                continue
            sc = copy.deepcopy(sc)
            if (
                sc.model.path is None
                and sc.model.gguf is None
                and sc.model.tiny is not None
                and sc.model.tiny.tokenizer_from == "teacher"
            ):
                sc.model.tiny.tokenizer_from = self.teacher_path()
            out.append(sc)
        return out

    def load_data(self) -> tuple[list[Context], dict[str, Source]]:
        from orchestrator.protocols.evaluate import check_disjoint
        from orchestrator.tasks.squad import bundled_path

        s = self.cfg.sweep
        files = {
            n: spec.partition(":")[2]
            for n, spec in active_sources(self.cfg).items()
            if spec.startswith("edits:")
        }
        data = s.data or str(bundled_path())
        contexts, file_sources = load_eval_data(data, list(files.values()), s.limit)
        check_disjoint(self.cfg, self.task, contexts)
        by_name = {n: dataclasses.replace(src, name=n) for n, src in zip(files, file_sources)}
        return contexts, by_name

    # ---- keys
    def cell_key(self, protocol: str, source: SweepSource | None, sc: StudentConfig, data: str) -> str:
        s = self.cfg.sweep
        proto = {"name": protocol, "k": s.k, "n": s.cpt_n if protocol == "cpt" else 0}
        student = {"cfg": dataclasses.asdict(sc), "task": dataclasses.asdict(self.cfg.task)}
        if sc.model.path is not None:
            student["weights"] = file_digest(sc.model.path) if Path(sc.model.path).exists() else sc.model.path
        if sc.model.gguf is not None:
            student["weights"] = sc.model.gguf
        src = None if source is None else [source.name, source.kind, source.digest]
        return digest([SWEEP_VERSION, proto, student, src, data, self.cfg.run.seed])[:20]

    # ---- run
    def run(self) -> SweepOutcome:
        from orchestrator.sweep.report import write_reports

        started = time.time()
        contexts, file_sources = self.load_data()
        data = contexts_digest(contexts)
        sources = self.sources.rows()
        students = self.students()
        self.rd.write_text("config.yaml", to_yaml(self.cfg))
        cells: list[tuple[Cell, list[UpdateResult] | None, str | None]] = []
        for sc in students:
            cells += self._student_cells(sc, sources, contexts, file_sources, data)
        table = write_reports(self.cfg, self.rd, contexts, sources, [s.name for s in students], cells)
        self.distill.release()
        return SweepOutcome(self.rd.path, self.computed, self.reused, time.time() - started, table)

    def _student_cells(
        self,
        sc: StudentConfig,
        sources: list[SweepSource],
        contexts: list[Context],
        file_sources: dict[str, Source],
        data: str,
    ) -> list[tuple[Cell, list[UpdateResult] | None, str | None]]:
        """Every cell of one student: cached ones are read, the rest computed (the student loaded once)."""
        plan: list[tuple[Cell, SweepSource | None]] = [
            (Cell("base", "base", sc.name, self.cell_key("base", None, sc, data)), None)
        ]
        for protocol in self.cfg.sweep.protocols:
            for src in sources:
                plan.append((Cell(protocol, src.name, sc.name, self.cell_key(protocol, src, sc, data)), src))
        out: list[tuple[Cell, list[UpdateResult] | None, str | None]] = []
        student = None
        base = BaseAnswers()
        for cell, src in plan:
            skip = self.distill.skip_reason(sc, src)
            if skip is not None:
                out.append((cell, None, skip))
                continue
            cached = self.cache.read(cell)
            if cached is not None:
                self.reused += 1
                out.append((cell, cached, None))
                continue
            if student is None:
                student = self.load_student(sc)
            results = self._compute(cell, src, student, contexts, file_sources, base)
            self.cache.write(cell, results)
            self.computed += 1
            out.append((cell, results, None))
        del student
        free_memory(collect=True)
        return out

    def load_student(self, sc: StudentConfig) -> Any:
        from orchestrator.models import load_student

        return load_student(sc, self.task, self.cfg.run.cache_dir, self.device, f"student {sc.name}")

    # ---- cells
    def _compute(
        self,
        cell: Cell,
        src: SweepSource | None,
        student: Any,
        contexts: list[Context],
        file_sources: dict[str, Source],
        base: BaseAnswers,
    ) -> list[UpdateResult]:
        from orchestrator.protocols.evaluate import PROTOCOLS as RUN

        s = self.cfg.sweep
        log.info("computing cell %s / %s / %s", cell.protocol, cell.source, cell.student)
        settings = Settings(
            run_seed=self.cfg.run.seed,
            k=s.k,
            n=s.cpt_n,
            include_context=student.cfg.adapt.include_context,
            progress=self.cfg.run.progress,
        )
        if src is None:
            return RUN["single"](student, Source("base", "base"), contexts, settings, base)
        if src.kind == DISTILL:
            return self.distill.cell(cell, src, student, contexts, settings, base)
        if src.kind == "passage":
            source = Source(src.name, "passage")
        elif src.kind == "edits":
            source = file_sources[src.name]
        else:
            source = Source(src.name, "edits", self.sources.teacher_edits(src, contexts)[0])
        return RUN[cell.protocol](student, source, contexts, settings, base)


def sweep_dir(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / (cfg.sweep.name or cfg.run.name)


def run_sweep(cfg: Config) -> SweepOutcome:
    """Check the sweep section, train the teacher run if asked, compute missing cells, write the reports."""
    from orchestrator.runner import seed_everything

    check_sweep(cfg)
    ensure_teacher_run(cfg)
    path = sweep_dir(cfg)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {exc.strerror or exc}") from None
    seed_everything(cfg.run.seed)
    return Sweep(cfg, path).run()
