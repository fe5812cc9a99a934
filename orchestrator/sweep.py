"""``teachedit sweep``: which edits transfer to which students.

A matrix of *edit sources* (``passage``, edit files such as the bundled GPT-4.1 and Qwen2.5-7B edits, teacher
checkpoints, e.g. every round of a ``teachedit run`` directory) x *students* (the config's) x *protocols*
(``single``, ``cpt`` of :mod:`orchestrator.protocols`), plus an optional logit-distillation row
(:mod:`student.distill`) for students that share the teacher's tokenizer. Each cell is scored against the
unchanged student (``base``) on the same passages: the mean gain per passage, with its standard error.

Every cell is cached under ``<run.output_dir>/<sweep.name or run.name>/cells/<key>.json``; the key hashes what
the cell depends on (source content, student spec, protocol settings, passages, seed), so a second invocation
recomputes nothing and changing one student recomputes only its cells. Teachers' edits are cached as
SEAL-format files under ``edits/`` (reusable with ``teachedit eval --edits``). Outputs: ``sweep.json``,
``sweep.md`` and ``heatmap.png`` (see :mod:`orchestrator.sweep_report`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config, ConfigError, ModelConfig, StudentConfig, load_config, to_yaml
from core.records import Context, json_safe
from orchestrator.protocols.common import Answer, BaseAnswers, Settings, UpdateResult
from orchestrator.protocols.data import Source, load_eval_data, seal_records
from orchestrator.rundir import RunDir, RunDirError
from student.lifecycle import free_memory, update_seed

log = logging.getLogger(__name__)

SWEEP_VERSION = 1  # bump when a cell's computation changes, so cached cells are recomputed
PROTOCOLS = ("single", "cpt")
METRICS = ("gold_logprob", "em", "f1")
DISTILL = "distill"  # the name of the distillation row


@dataclass(frozen=True)
class SweepSource:
    """One row of the sweep. ``kind``: passage | edits (a file) | teacher (a checkpoint writes edits) | distill.
    ``path``: the edits file or teacher folder (None: the config's teacher). ``digest`` identifies the content."""

    name: str
    kind: str
    path: str | None = None
    digest: str = ""


@dataclass(frozen=True)
class Cell:
    protocol: str  # "base" for the unchanged student (protocol-independent)
    source: str  # source name ("base" for the base cell)
    student: str
    key: str


@dataclass
class SweepOutcome:
    path: Path
    computed: int  # cells computed by this invocation
    reused: int  # cells read from the cache
    seconds: float
    table: str  # the markdown of sweep.md


# -- config ------------------------------------------------------------------------------------------------
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
        if s.distill.cross_tokenizer not in ("gold", "skip"):
            raise ConfigError("sweep.distill.cross_tokenizer: use gold or skip")
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
    if s.metric not in METRICS:
        raise ConfigError(f"sweep.metric: {s.metric!r}; use one of {list(METRICS)}")
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


# -- identity ----------------------------------------------------------------------------------------------
def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(obj), sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path, large: int = 256 << 20) -> str:
    """Content hash of a file, or of a folder's files (a model checkpoint). Files over ``large`` bytes count by
    name, size and modification time instead, so a 7B checkpoint is not read just to name it."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        st = f.stat()
        if st.st_size > large:
            h.update(f"{st.st_size}/{st.st_mtime_ns}".encode())
        else:
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def contexts_digest(contexts: list[Context]) -> str:
    return digest([dataclasses.asdict(c) for c in contexts])


# -- the sweep ---------------------------------------------------------------------------------------------
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
        self._teacher_path: str | None = None
        self._edits: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, str]]] = {}
        self._distill_teacher: Any = None

    # ---- inputs
    def teacher_path(self) -> str:
        """The config's teacher, built if it is a tiny spec."""
        from orchestrator.models import resolve_model_path

        if self._teacher_path is None:
            self._teacher_path = resolve_model_path(
                self.cfg.teacher.model, "teacher", self.task, self.cfg.run.cache_dir
            )
        return self._teacher_path

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

    def sources(self) -> list[SweepSource]:
        """Rows in config order: sweep.sources, the rounds of sweep.teacher_run, then distill."""
        out = [self._source(n, spec) for n, spec in active_sources(self.cfg).items()]
        if self.cfg.sweep.teacher_run is not None:
            run = Path(self.cfg.sweep.teacher_run)
            rounds = sorted((run / "teacher").glob("round_*"), key=lambda p: int(p.name.split("_")[1]))
            if not rounds:
                raise RunDirError(f"{run}: no teacher/round_k checkpoint; is it a finished `teachedit run`?")
            out += [self._source(f"{run.name}/{p.name}", f"teacher:{p}") for p in rounds]
        if self.cfg.sweep.distill.enabled:
            t = self._source(DISTILL, self.cfg.sweep.distill.teacher)
            d = digest([t.digest, dataclasses.asdict(self.cfg.sweep.distill)])
            out.append(SweepSource(DISTILL, DISTILL, t.path, d))
        return out

    def _source(self, name: str, spec: str) -> SweepSource:
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
        from orchestrator.sweep_report import write_reports

        started = time.time()
        contexts, file_sources = self.load_data()
        data = contexts_digest(contexts)
        sources = self.sources()
        students = self.students()
        self.rd.write_text("config.yaml", to_yaml(self.cfg))
        cells: list[tuple[Cell, list[UpdateResult] | None, str | None]] = []
        for sc in students:
            cells += self._student_cells(sc, sources, contexts, file_sources, data)
        table = write_reports(self.cfg, self.rd, contexts, sources, [s.name for s in students], cells)
        self._distill_teacher = None
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
            skip = self._skip_reason(sc, src)
            if skip is not None:
                out.append((cell, None, skip))
                continue
            cached = self._read_cell(cell)
            if cached is not None:
                self.reused += 1
                out.append((cell, cached, None))
                continue
            if student is None:
                student = self._load_student(sc)
            results = self._compute(cell, src, student, contexts, file_sources, base)
            self._write_cell(cell, results)
            self.computed += 1
            out.append((cell, results, None))
        del student
        free_memory(collect=True)
        return out

    def _skip_reason(self, sc: StudentConfig, src: SweepSource | None) -> str | None:
        """Distillation needs the teacher's vocabulary; checked on the tokenizers alone (cheap)."""
        if src is None or src.kind != DISTILL:
            return None
        from core.models import load_tokenizer
        from orchestrator.models import resolve_model_path
        from student.distill import shares_vocabulary

        if self.cfg.sweep.distill.cross_tokenizer == "gold":
            return None  # another tokenizer: GOLD's ULD loss
        path = resolve_model_path(sc.model, "student", self.task, self.cfg.run.cache_dir)
        tpath = src.path or self.teacher_path()
        if shares_vocabulary(load_tokenizer(path, sc.model), load_tokenizer(tpath, self._teacher_mc(tpath))):
            return None
        return "tokenizer differs from the teacher's (sweep.distill.cross_tokenizer=skip)"

    def _teacher_mc(self, path: str) -> ModelConfig:
        return dataclasses.replace(self.cfg.teacher.model, path=path, tiny=None)

    def _load_student(self, sc: StudentConfig) -> Any:
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
            return self._distill_cell(cell, src, student, contexts, settings, base)
        if src.kind == "passage":
            source = Source(src.name, "passage")
        elif src.kind == "edits":
            source = file_sources[src.name]
        else:
            source = Source(src.name, "edits", self.teacher_edits(src, contexts)[0])
        return RUN[cell.protocol](student, source, contexts, settings, base)

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
        teacher = self._load_teacher(src)
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

    def _load_teacher(self, src: SweepSource) -> Any:
        from core.models import load_causal_lm, load_tokenizer
        from teacher.model import Teacher

        path = src.path or self.teacher_path()
        mc = self._teacher_mc(path)
        return Teacher(self.cfg.teacher, load_causal_lm(path, mc, self.device), load_tokenizer(path, mc))

    def _distill_cell(
        self,
        cell: Cell,
        src: SweepSource,
        student: Any,
        contexts: list[Context],
        settings: Settings,
        base: BaseAnswers,
    ) -> list[UpdateResult]:
        """The protocol's updates with logit distillation instead of fine-tuning on edit text: per passage
        one update per teacher edit (single), or one update on all edits of ``cpt_n`` passages (cpt)."""
        from orchestrator.protocols.cpt import groups

        teacher_src = self._source(DISTILL, self.cfg.sweep.distill.teacher)
        texts, prompts = self.teacher_edits(teacher_src, contexts)
        if self._distill_teacher is None:
            self._distill_teacher = self._load_teacher(teacher_src)
        k = settings.k

        def examples(group: list[Context]) -> list[Any]:
            from student.distill import DistillExample

            return [DistillExample(prompts[c.id], t) for c in group for t in texts[c.id][: k or None]]

        if cell.protocol == "single":
            plan = [(i, [c], [ex]) for c in contexts for i, ex in enumerate(examples([c]))]
        else:
            plan = [(g, group, examples(group)) for g, group in enumerate(groups(contexts, settings.n))]
        from student.distill import shares_vocabulary

        # another tokenizer: GOLD's ULD loss, reading the teacher's tokenizer from its folder (compared once per
        # cell: building both vocabularies costs ~0.1 s for a 262k-token tokenizer)
        teacher = self._distill_teacher
        cross = None if shares_vocabulary(student.tok, teacher.tok) else teacher.tok.name_or_path
        return [
            self._distill_update(student, src.name, step, group, exs, settings, base, cross)
            for step, group, exs in plan
        ]

    def _distill_update(
        self,
        student: Any,
        name: str,
        step: int,
        group: list[Context],
        examples: list[Any],
        settings: Settings,
        base: BaseAnswers,
        cross: str | None,
    ) -> UpdateResult:
        from orchestrator.protocols.common import answer_questions
        from student.distill import distilled
        from student.lifecycle import EditError

        started = time.time()
        ids = [c.id for c in group]
        seed = update_seed(settings.run_seed, name, student.name, step, ids)
        teacher = self._distill_teacher
        loss, error = None, None
        try:
            with distilled(
                student,
                teacher.model,
                examples,
                self.cfg.sweep.distill,
                seed,
                not teacher.uses_chat_template,
                teacher_tokenizer=cross,
            ) as loss:
                answers = answer_questions(student, group)
        except EditError as exc:
            answers, error = base.get(student, group), str(exc)
        return UpdateResult(
            source=name,
            student=student.name,
            step=step,
            context_ids=ids,
            answers=answers,
            train_loss=loss,
            error=error,
            seconds=time.time() - started,
            n_items=len(examples),
        )

    # ---- cache
    def _cell_file(self, cell: Cell) -> Path:
        return self.rd.path / "cells" / f"{cell.key}.json"

    def _read_cell(self, cell: Cell) -> list[UpdateResult] | None:
        path = self._cell_file(cell)
        if not path.is_file():
            return None
        try:
            return [_update_from_dict(d) for d in json.loads(path.read_text())["results"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("cached cell %s is unreadable (%s); recomputing it", path, exc)
            return None

    def _write_cell(self, cell: Cell, results: list[UpdateResult]) -> None:
        (self.rd.path / "cells").mkdir(exist_ok=True)
        record = {**dataclasses.asdict(cell), "results": [r.to_dict() for r in results]}
        self.rd.write_json(f"cells/{cell.key}.json", json_safe(record))


def _update_from_dict(d: dict[str, Any]) -> UpdateResult:
    answers = [
        Answer(**{**a, "logprob": a["logprob"] if a["logprob"] is not None else float("-inf")})
        for a in d["answers"]
    ]
    return UpdateResult(**{**d, "answers": answers})


# -- held-out transfer: train the teacher against one pool first --------------------------------------------
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
