"""``teachedit eval``: evaluate every student of a config on SEAL-format passages, for several sources of
updates, under one protocol; write the table and the per-update records to a new directory.

Directory layout (``<run.output_dir>/<name>/``)::

    config.yaml         resolved config          request.json      the eval's arguments
    updates.jsonl       one line per update as it completes (answers, loss, error)
    teacher_edits.json  the teacher's edits in SEAL format (reusable with --edits), if the teacher ran
    judge.jsonl         the judge's verdicts, if a judge is configured
    eval.json           {"rows": [{source, student, em, f1, gold_logprob, n_questions, ...}]}
    eval.md             the same as a markdown table
    forgetting.json / forgetting.png   the continual protocol's matrices and heatmap
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import Config, ConfigError, to_yaml
from core.models import load_causal_lm, load_tokenizer, resolve_device
from core.records import Context, json_safe
from orchestrator.models import resolve_model_path
from orchestrator.protocols.common import BaseAnswers, Settings, UpdateResult
from orchestrator.protocols.continual import (
    baseline_scores,
    forgetting_matrix,
    plot_forgetting,
    run_continual,
)
from orchestrator.protocols.cpt import run_cpt
from orchestrator.protocols.data import Source, load_eval_data, load_passages, normalize_text, seal_records
from orchestrator.protocols.single import run_single
from orchestrator.protocols.table import Row, markdown_table, summarize, triple
from orchestrator.rundir import RunDir, RunDirError
from student.lifecycle import free_memory

log = logging.getLogger(__name__)

ProtocolFn = Callable[[Any, Source, list[Context], Settings, BaseAnswers], list[UpdateResult]]
PROTOCOLS: dict[str, ProtocolFn] = {"single": run_single, "cpt": run_cpt, "continual": run_continual}
SOURCE_KINDS = ("base", "passage", "teacher", "edits")  # "edits": every --edits file


@dataclass
class EvalRequest:
    """The arguments of ``teachedit eval`` (see ``teachedit eval --help``)."""

    data: str
    edits: list[str] = field(default_factory=list)
    limit: int = 0  # passages evaluated (0: all covered by every edits file)
    skip: int = 0  # passages left out before the first evaluated one (e.g. those another table reports)
    protocol: str = "single"
    n: int = 0  # cpt: passages per update; continual: steps (0: all)
    k: int = 0  # edits per passage (0: all; continual: 1)
    sources: list[str] = field(default_factory=lambda: list(SOURCE_KINDS))
    name: str | None = None  # output directory name under run.output_dir
    metric: str = "gold_logprob"  # continual heatmap: em | f1 | gold_logprob
    allow_trained_passages: bool = False  # score a trained teacher on passages its run trained it on

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.protocol!r}: choose from {sorted(PROTOCOLS)}")
        bad = [s for s in self.sources if s not in SOURCE_KINDS]
        if bad or not self.sources:
            raise ConfigError(f"--sources {bad or '(empty)'}: choose from {','.join(SOURCE_KINDS)}")
        resolved = [str(Path(e).expanduser().resolve()) for e in self.edits]
        repeated = sorted({e for e in self.edits if resolved.count(str(Path(e).expanduser().resolve())) > 1})
        if repeated:
            raise ConfigError(f"--edits: {repeated} given more than once; pass each edits file once")
        if self.edits and "edits" not in self.sources:
            raise ConfigError("--edits files given but 'edits' is not in --sources; add it or drop --edits")
        for flag in ("limit", "skip", "n", "k"):
            if getattr(self, flag) < 0:
                raise ConfigError(f"--{flag} must be >= 0 (0 means all)")
        if self.metric not in ("em", "f1", "gold_logprob"):
            raise ConfigError("--metric: use em, f1 or gold_logprob")
        if self.name is not None and (not self.name or "/" in self.name):
            raise ConfigError("--name: a non-empty directory name without '/'")


@dataclass
class EvalOutcome:
    path: Path
    rows: list[Row]
    passages: int
    seconds: float


def create_eval_dir(cfg: Config, req: EvalRequest) -> RunDir:
    """A new directory for this evaluation (refuses an existing one unless run.overwrite=true)."""
    name = req.name or f"eval-{req.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run.output_dir) / name
    if path.exists() and any(path.iterdir()):
        if not cfg.run.overwrite:
            raise RunDirError(f"{path} already exists; pass another --name or set run.overwrite=true")
        import shutil

        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {exc.strerror or exc}") from None
    return RunDir(path)


EVAL_SKELETON = {"config.yaml", "request.json", "eval.log"}


def discard_if_empty(rd: RunDir) -> bool:
    """Remove an eval directory that holds nothing but its config, request and log (an evaluation that
    stopped before scoring anything: a model that cannot load, a signal), so a refusal leaves no trace."""
    if not rd.path.is_dir() or any(p.name not in EVAL_SKELETON for p in rd.path.iterdir()):
        return False
    import shutil

    shutil.rmtree(rd.path, ignore_errors=True)
    log.info("removed %s: the evaluation stopped before scoring anything", rd.path)
    return True


@dataclass
class EvalPlan:
    """What an evaluation runs on, checked before any directory is created or model loaded."""

    task: Any
    contexts: list[Context]
    file_sources: list[Source]


def plan_eval(cfg: Config, req: EvalRequest) -> EvalPlan:
    """Check the request, the task, the data files and every model source the request needs. Bad input
    raises here (ConfigError, DataFormatError, FileNotFoundError) with the fix named."""
    from orchestrator.preflight import check_model_source, check_teacher_backend
    from orchestrator.preflight import check_task as build_checked_task

    req.check()
    if cfg.task.name != "squad":
        raise ConfigError(
            f"task.name={cfg.task.name}: `teachedit eval` scores SQuAD-format passages; use a squad config "
            "(the task sets the QA prompt and the corpus tiny models are built on), e.g. configs/squad_tiny.yaml"
        )
    task = build_checked_task(cfg)
    contexts, file_sources = load_eval_data(
        req.data, req.edits if "edits" in req.sources else [], req.limit, req.skip
    )
    check_disjoint(cfg, task, contexts)
    if "teacher" in req.sources and not req.allow_trained_passages:
        check_teacher_unseen(cfg, contexts)
    if "teacher" in req.sources:
        check_teacher_backend(cfg)
    models = [(s.model, f"students[{i}].model") for i, s in enumerate(cfg.students)]
    models += [(cfg.teacher.model, "teacher.model")] if "teacher" in req.sources else []
    models += [(cfg.judge.model, "judge.model")] if cfg.judge is not None else []
    for mc, where in models:
        check_model_source(mc, where)
    return EvalPlan(task, contexts, file_sources)


def check_disjoint(cfg: Config, task: Any, contexts: list[Context]) -> None:
    """Tiny students must not have been pretrained on the passages they are scored on."""
    tiny = [
        s.name
        for s in cfg.students
        if s.model.tiny is not None
        and s.model.path is None
        and s.model.gguf is None
        and s.model.tiny.pretrain != "none"
    ]
    if not tiny:
        return
    seen = {normalize_text(c.text) for c in load_passages(task.path)}
    overlap = sum(normalize_text(c.text) in seen for c in contexts)
    if overlap:
        raise ConfigError(
            f"{overlap} of the {len(contexts)} evaluated passages are in task.path ({task.path}), the corpus "
            f"tiny students {tiny} are pretrained on. Point task.path at passages disjoint from --data "
            "(configs/squad_tiny.yaml uses the bundled SQuAD train passages)."
        )


def trained_run(teacher_path: str | None) -> tuple[Path, int] | None:
    """``(run directory, k)`` when ``teacher_path`` is a teachedit run's checkpoint
    ``<run>/teacher/round_<k>`` (the teacher after k updates), else None."""
    if teacher_path is None:
        return None
    path = Path(teacher_path).expanduser()
    name = path.name
    if path.parent.name != "teacher" or not name.startswith("round_") or not name[6:].isdigit():
        return None
    run = path.parent.parent
    return (run, int(name[6:])) if (run / "config.yaml").is_file() else None


def check_teacher_unseen(cfg: Config, contexts: list[Context]) -> None:
    """Refuse to score a trained teacher checkpoint on passages its run trained it on (ReST-EM trains on the
    run's training contexts every round): the score would measure memorisation. ``--allow-trained-passages``
    lifts it."""
    found = trained_run(cfg.teacher.model.path)
    if found is None or found[1] == 0:
        return  # not a run's checkpoint, or the untrained round_0 teacher
    from core.config import load_config
    from orchestrator.tasks import build_task

    run, k = found
    run_cfg = load_config(run / "config.yaml")
    if run_cfg.task.name != "squad":
        return
    trained = {normalize_text(c.text) for c in build_task(run_cfg.task).train_contexts()}
    overlap = [c.id for c in contexts if normalize_text(c.text) in trained]
    if overlap:
        raise ConfigError(
            f"teacher.model.path={cfg.teacher.model.path} was trained (ReST-EM, {k} update(s)) on {len(overlap)} "
            f"of the {len(contexts)} evaluated passages (e.g. {overlap[:3]}); its score there measures "
            f"memorisation. Evaluate on other passages (--data, --limit), drop 'teacher' from --sources, or "
            f"pass --allow-trained-passages to score it anyway."
        )


def teacher_source(
    cfg: Config, task: Any, contexts: list[Context], device: torch.device, rd: RunDir
) -> Source:
    """The config's teacher writes ``teacher.generation.num_edits`` edits per passage (then is freed)."""
    from orchestrator.models import build_teacher

    teacher, path = build_teacher(cfg, task, device)
    log.info("teacher %s writes %d edits per passage", path, cfg.teacher.generation.num_edits)
    edits = teacher.propose(contexts, 0, seed=cfg.run.seed, progress=cfg.run.progress)
    texts: dict[str, tuple[str, ...]] = {}
    prompts: dict[str, str] = {}
    for e in sorted(edits, key=lambda e: (e.context_id, e.sample_index)):
        texts[e.context_id] = texts.get(e.context_id, ()) + (e.text,)
        prompts[e.context_id] = e.prompt
    rd.write_json("teacher_edits.json", seal_records(contexts, texts, prompts))
    del teacher
    free_memory(collect=True)
    return Source("teacher", "edits", texts)


def load_student(cfg: Config, index: int, task: Any, device: torch.device) -> Any:
    """The config's ``index``-th student, loaded unsharded (:func:`orchestrator.models.load_student`)."""
    from orchestrator.models import load_student as load

    return load(cfg.students[index], task, cfg.run.cache_dir, device, f"students[{index}].model")


def load_judge(cfg: Config, task: Any, device: torch.device) -> Any:
    from student.judge import Judge

    jc = cfg.judge
    assert jc is not None
    path = resolve_model_path(jc.model, "judge", task, cfg.run.cache_dir)
    return Judge(
        load_causal_lm(path, jc.model, device),
        load_tokenizer(path, jc.model),
        jc.use_chat_template,
        jc.batch_size,
    )


def grade(cfg: Config, task: Any, results: list[UpdateResult], device: torch.device, rd: RunDir) -> dict:
    """The judge's verdict on every distinct (question, gold, prediction) of the counted answers."""
    triples = list(dict.fromkeys(triple(a) for r in results if r.counted for a in r.answers))
    judge = load_judge(cfg, task, device)
    log.info("judge grades %d distinct answers", len(triples))
    verdicts = judge.grade(triples)
    for (q, g, p), v in zip(triples, verdicts):
        rd.append_jsonl(
            "judge.jsonl", json_safe({"question": q, "gold": g, "prediction": p, **dataclasses.asdict(v)})
        )
    del judge
    free_memory(collect=True)
    return {t: v.correct for t, v in zip(triples, verdicts)}


def run_eval(cfg: Config, req: EvalRequest, rd: RunDir, plan: EvalPlan | None = None) -> EvalOutcome:
    """Evaluate every student on ``req.data`` for every requested source under ``req.protocol``."""
    from orchestrator.provenance import provenance, yaml_header
    from orchestrator.runner import seed_everything

    started = time.time()
    plan = plan or plan_eval(cfg, req)
    task, contexts = plan.task, plan.contexts
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.run.device)
    rd.write_text("config.yaml", yaml_header() + to_yaml(cfg))
    rd.write_json("request.json", {**dataclasses.asdict(req), "provenance": provenance()})
    n_q = sum(len(c.questions) for c in contexts)
    log.info("%s protocol on %d passages (%d questions) of %s", req.protocol, len(contexts), n_q, req.data)
    sources = [Source(s, s) for s in ("base", "passage") if s in req.sources]
    if "teacher" in req.sources:
        sources.append(teacher_source(cfg, task, contexts, device, rd))
    sources += plan.file_sources
    results = evaluate_students(cfg, req, task, sources, contexts, device, rd)
    verdicts = grade(cfg, task, results, device, rd) if cfg.judge is not None else None
    rows = _order(summarize(results, verdicts), sources, cfg)
    if req.protocol == "continual":
        write_forgetting(results, contexts, req, rd)
    write_table(rows, req, contexts, rd)
    return EvalOutcome(rd.path, rows, len(contexts), time.time() - started)


def evaluate_students(
    cfg: Config,
    req: EvalRequest,
    task: Any,
    sources: list[Source],
    contexts: list[Context],
    device: torch.device,
    rd: RunDir,
) -> list[UpdateResult]:
    """Run the protocol for every source on each student in turn (one student in memory at a time); every
    update's record is appended to ``updates.jsonl`` as it completes."""
    settings = Settings(
        run_seed=cfg.run.seed,
        k=req.k,
        n=req.n,
        progress=cfg.run.progress,
        on_update=lambda r: rd.append_jsonl("updates.jsonl", r.to_dict()),
    )
    results: list[UpdateResult] = []
    for i in range(len(cfg.students)):
        student = load_student(cfg, i, task, device)
        settings.include_context = student.cfg.adapt.include_context
        base = BaseAnswers()
        for source in sources:
            results += PROTOCOLS[req.protocol](student, source, contexts, settings, base)
        del student, base
        free_memory(collect=True)
    return results


def write_table(rows: list[Row], req: EvalRequest, contexts: list[Context], rd: RunDir) -> None:
    doc = {"protocol": req.protocol, "data": req.data, "passages": len(contexts)}
    rd.write_json("eval.json", json_safe({**doc, "rows": [dataclasses.asdict(r) for r in rows]}))
    head = f"# teachedit eval: {req.protocol} protocol\n\n{_describe(req, contexts)}\n\n"
    rd.write_text("eval.md", head + markdown_table(rows) + "\n")


def write_forgetting(
    results: list[UpdateResult], contexts: list[Context], req: EvalRequest, rd: RunDir
) -> None:
    steps = contexts[: req.n] if req.n > 0 else contexts
    ids = [c.id for c in steps]
    base = {r.student: r.answers for r in results if r.source == "base"}
    entries = []
    for source, student in dict.fromkeys((r.source, r.student) for r in results if r.source != "base"):
        mine = [r for r in results if (r.source, r.student) == (source, student)]
        entry = {
            "source": source,
            "student": student,
            "matrix": forgetting_matrix(mine, ids),
            "errors": [r.error for r in mine],
        }
        if student in base:
            entry["baseline"] = baseline_scores(base[student], ids)
        entries.append(entry)
    rd.write_json("forgetting.json", json_safe({"passages": ids, "entries": entries}))
    if entries:
        plot_forgetting(entries, req.metric, rd.path / "forgetting.png")


def _order(rows: list[Row], sources: list[Source], cfg: Config) -> list[Row]:
    src = [s.name for s in sources]
    stu = [s.name for s in cfg.students]
    return sorted(rows, key=lambda r: (src.index(r.source), stu.index(r.student)))


def _describe(req: EvalRequest, contexts: list[Context]) -> str:
    n_q = sum(len(c.questions) for c in contexts)
    parts = [f"data: `{req.data}`", f"passages: {len(contexts)}", f"questions: {n_q}"]
    if req.edits:
        parts.append("edits: " + ", ".join(f"`{e}`" for e in req.edits))
    if req.protocol != "single" and req.n:
        parts.append(f"n: {req.n}")
    if req.k:
        parts.append(f"k: {req.k}")
    return "; ".join(parts)
