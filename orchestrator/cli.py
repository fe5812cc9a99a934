"""The ``teachedit`` command line (also ``python -m orchestrator``). The only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _setup_logging(verbose: bool, logfile: Path | None = None, rank: int | None = None) -> None:
    """``rank`` (under a launcher): rank 0 logs as one process does; the others log warnings only, tagged."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        handlers.append(logging.FileHandler(logfile))
    level = logging.DEBUG if verbose else logging.INFO
    if rank:
        level = max(level, logging.WARNING)
    tag = "" if rank is None else f"[rank {rank}] "
    logging.basicConfig(
        level=level,
        handlers=handlers,
        force=True,
        format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every model load
    # ...which also silences huggingface_hub's bars; a hub download can take minutes, so keep those
    # (unless the user turned them off with HF_HUB_DISABLE_PROGRESS_BARS).
    if not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        import huggingface_hub.utils

        huggingface_hub.utils.enable_progress_bars()
    import datasets

    datasets.disable_progress_bars()


def _resumed_dist_timeout(args: argparse.Namespace) -> float | None:
    """``run.dist_timeout_minutes`` of the run ``--resume`` continues, read before the process group exists. A
    run directory whose config does not load gives None here: ``Runner.resume`` reports the error."""
    from core.config import load_config

    try:
        return load_config(Path(args.resume) / "config.yaml", args.overrides).run.dist_timeout_minutes
    except Exception:  # reported, with its fix, where the run loads the config
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from core.config import ConfigError, load_config
    from core.distributed import init_from_launcher, launched, timeout_minutes
    from orchestrator.report import round_table
    from orchestrator.rundir import INTERRUPTED
    from orchestrator.runner import Runner
    from orchestrator.signals import Preempted

    cfg = None
    if args.resume and args.config is not None:
        raise ConfigError(
            f"--resume continues {args.resume} with its own config.yaml; give key=value overrides only, "
            f"not CONFIG ({args.config})"
        )
    if not args.resume:
        if args.config is None:
            print(
                "teachedit run: give a CONFIG (e.g. configs/default.yaml) or --resume RUN_DIR",
                file=sys.stderr,
            )
            return 2
        cfg = load_config(
            args.config, args.overrides
        )  # config errors come back fast; no process group needed
    # under deepspeed/torchrun: before any model or TrainingArguments, with the config's collective timeout
    timeout = None
    if launched():
        timeout = cfg.run.dist_timeout_minutes if cfg is not None else _resumed_dist_timeout(args)
    env = init_from_launcher(timeout)
    if cfg is None:
        _quiet_libraries()  # before preflight reads data files (datasets' progress bars)
        runner = Runner.resume(args.resume, args.overrides)
    else:
        _quiet_libraries()
        runner = Runner.new(cfg)
    if not env.is_main:  # only rank 0 writes run files and prints
        _setup_logging(args.verbose, None, rank=env.rank)
        runner.run()
        return 0
    _setup_logging(args.verbose, runner.rundir.path / "run.log", rank=0 if launched() else None)
    print(f"run directory: {runner.rundir.path}")
    if launched():
        minutes = timeout_minutes()
        shown = f"{minutes:g} min" if minutes is not None else "DeepSpeed's default"
        print(f"ranks: {env.world_size} (collectives time out after {shown}: run.dist_timeout_minutes)")
    try:
        summary = runner.run()
    except Preempted as exc:
        marker = runner.rundir.path / INTERRUPTED
        if marker.is_file():
            info = json.loads(marker.read_text())
            print(
                f"teachedit: stopped by {exc.name}; {info['records']} record(s) and "
                f"{info['rounds_completed']} round(s) are saved. Continue with: {info['resume']}",
                file=sys.stderr,
            )
        else:
            print(
                f"teachedit: stopped by {exc.name} before anything was recorded; {runner.rundir.path} was "
                f"removed. Run the same command again to start over.",
                file=sys.stderr,
            )
        return exc.exit_code
    print()
    print(round_table(summary))
    print()
    print(
        f"wall time {summary['wall_seconds']:.0f}s; results in {runner.rundir.path}/ "
        f"(summary.json, metrics.jsonl, edits/, teacher/, reward_curve.png)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from core.config import ConfigError, load_config
    from orchestrator.protocols import (
        EvalRequest,
        create_eval_dir,
        discard_if_empty,
        markdown_table,
        plan_eval,
        run_eval,
    )
    from orchestrator.signals import Preempted

    cfg = load_config(args.config, args.overrides)
    if args.students:
        wanted = [n.strip() for n in args.students.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {s.name for s in cfg.students})
        if unknown or not wanted:
            raise ConfigError(
                f"--students {unknown or '(empty)'}: choose from {','.join(s.name for s in cfg.students)}"
            )
        cfg.students = [s for s in cfg.students if s.name in wanted]
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    req = EvalRequest(
        data=args.data,
        edits=list(args.edits or []),
        limit=args.limit,
        skip=args.skip,
        protocol=args.protocol,
        n=args.n,
        k=args.k,
        sources=sources,
        name=args.name,
        metric=args.metric,
        allow_trained_passages=args.allow_trained_passages,
    )
    _setup_logging(args.verbose)
    _quiet_libraries()  # before the data files are read (datasets' progress bars)
    plan = plan_eval(cfg, req)  # bad input fails here, before a directory is created
    rd = create_eval_dir(cfg, req)
    _setup_logging(args.verbose, rd.path / "eval.log")
    print(f"eval directory: {rd.path}")
    try:
        outcome = run_eval(cfg, req, rd, plan)
    except Preempted as exc:
        if not discard_if_empty(rd):
            print(
                f"teachedit: stopped by {exc.name}; {rd.path} keeps what was scored so far (updates.jsonl). "
                f"An evaluation has no --resume: run it again with another --name.",
                file=sys.stderr,
            )
            return exc.exit_code
        raise
    except BaseException:
        discard_if_empty(
            rd
        )  # a refusal after the directory was made (a model that cannot load) leaves nothing
        raise
    print()
    print(markdown_table(outcome.rows))
    print()
    extra = " forgetting.json, forgetting.png," if req.protocol == "continual" else ""
    print(
        f"{req.protocol} protocol on {outcome.passages} passages in {outcome.seconds:.0f}s; "
        f"results in {outcome.path}/ (eval.json, eval.md,{extra} updates.jsonl)"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or find) the config's tiny models, e.g. once before a multi-node launch."""
    from core.config import load_config
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task

    _setup_logging(args.verbose)
    _quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    task = build_task(cfg.task)
    roles = [("teacher", "teacher", cfg.teacher.model)] + [(s.name, "student", s.model) for s in cfg.students]
    for name, role, model in roles:
        print(f"{name}: {resolve_model_path(model, role, task, cfg.run.cache_dir)}")
    return 0


def cmd_styles(args: argparse.Namespace) -> int:
    import json

    from core.config import load_config
    from core.models import resolve_device
    from orchestrator.diagnostics import style_values
    from orchestrator.models import build_pool
    from orchestrator.runner import seed_everything
    from orchestrator.tasks import build_task

    _setup_logging(args.verbose)
    _quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    seed_everything(cfg.run.seed)
    task = build_task(cfg.task)
    pool = build_pool(cfg, task, resolve_device(cfg.run.device))
    values = style_values(cfg, task, pool, progress=cfg.run.progress)
    names = pool.names
    print(f"| edit style | pool reward ({cfg.reward.score} gain) | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for style, row in sorted(values.items(), key=lambda kv: -kv[1]["reward"][0]):
        m, se = row["reward"]
        print(f"| {style} | {m:+.3f} ± {se:.3f} | " + " | ".join(f"{row[n]:+.3f}" for n in names) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(values, indent=2) + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.report import compare_table, plot_comparison
    from orchestrator.runner import load_summary

    for run in args.runs:
        if not (Path(run) / "summary.json").is_file():
            raise FileNotFoundError(
                f"{run} has no summary.json: pass run directories written by `teachedit run`"
            )
    summaries = [load_summary(run) for run in args.runs]
    labels = [Path(run).name for run in args.runs]
    print(compare_table(summaries, labels))
    if args.out:
        plot_comparison(summaries, labels, Path(args.out))
        print(f"plot: {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.config import load_config
    from orchestrator.sweep import check_sweep, run_sweep, sweep_dir

    cfg = load_config(args.config, args.overrides)
    check_sweep(cfg)  # config errors before any model is built
    path = sweep_dir(cfg)
    path.mkdir(parents=True, exist_ok=True)
    _setup_logging(args.verbose, path / "sweep.log")
    _quiet_libraries()
    print(f"sweep directory: {path}")
    outcome = run_sweep(cfg)
    print()
    print(outcome.table)
    print(
        f"{outcome.computed} cell(s) computed, {outcome.reused} reused from the cache, in {outcome.seconds:.0f}s; "
        f"results in {outcome.path}/ (sweep.json, sweep.md, heatmap.png, cells/, edits/)"
    )
    return 0


DESCRIPTION = """\
teachedit trains a teacher language model to write the fine-tuning data ("edits") that other models (a pool
of students) learn best from: the teacher writes edits for a passage, each student is fine-tuned on each edit
and quizzed on the passage without seeing it, and the students' gains are the teacher's reward (SEAL's loop,
with the teacher and the students separated)."""

EPILOG = """\
examples:
  teachedit run configs/default.yaml                  the embedded demo (tiny local models, a few minutes)
  teachedit run configs/real_cpu.yaml                 real SmolLM2 / Gemma-3 models (make real-models)
  teachedit run --resume runs/default                 continue an interrupted run
  teachedit run --resume runs/default algorithm.rounds=4   add rounds to a finished run
  teachedit eval configs/real_cpu.yaml --data orchestrator/data/squad/passages.json --limit 40 --k 1
  teachedit config show teacher.generation            every setting with its default and help
  teachedit config list                               the bundled configs, usable by name
  teachedit push runs/default --to my-teacher         the trained teacher with a model card (or --repo-id)

Each command takes a YAML config (or a bundled config's name: default, real_cpu, ...) and key=value overrides (students.0.adapt.learning_rate=1e-4).
`teachedit COMMAND --help` describes a command; docs/bad-inputs.md lists every error and fault."""


def cmd_config(args: argparse.Namespace) -> int:
    from core.config import describe_fields

    rows = describe_fields(args.section)
    width = max(len(r[0]) for r in rows)
    for key, type_name, default, help_text in rows:
        print(f"{key:<{width}}  {type_name} = {default}")
        print(f"{'':<{width}}  {help_text}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from orchestrator.hub import PushError, push

    try:
        where = push(args.run_dir, args.round, args.repo_id, args.to, args.adapter_only, args.private)
    except PushError as exc:
        raise ValueError(str(exc)) from None
    print(f"teacher of {args.run_dir} written to {where} (with README.md, its model card)")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    from core.config import bundled_configs

    for name, path in bundled_configs().items():
        first = next((ln for ln in path.read_text().splitlines() if ln.startswith("#")), "#").lstrip("# ")
        print(f"{name:<32} {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="teachedit",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The deepspeed launcher passes --local_rank=N; the rank is read from the environment (LOCAL_RANK).
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a config: teacher → students → reward → teacher update, per round")
    run.add_argument(
        "config",
        nargs="?",
        help="YAML config, or a bundled config's name (teachedit config list), e.g. default",
    )
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.rounds=3")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run; algorithm.rounds=N (more than it has) adds rounds to a finished one",
    )
    run.set_defaults(fn=cmd_run)

    build = sub.add_parser("build", help="build and cache a config's tiny models (no run)")
    build.add_argument("config", help="YAML config, e.g. configs/ds_tiny.yaml")
    build.add_argument("overrides", nargs="*", help="key=value overrides")
    build.set_defaults(fn=cmd_build)

    styles = sub.add_parser("styles", help="how much each reference edit style is worth to each student")
    styles.add_argument("config")
    styles.add_argument("overrides", nargs="*")
    styles.add_argument("--out", help="also write the values as JSON")
    styles.set_defaults(fn=cmd_styles)

    compare = sub.add_parser("compare", help="compare runs' held-out reward curves (e.g. ReST-EM vs GRPO)")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each holds summary.json)")
    compare.add_argument("--out", metavar="FILE.png", help="write the comparison plot here")
    compare.set_defaults(fn=cmd_compare)
    _add_eval_parser(sub)
    _add_sweep_parser(sub)
    return p


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser(
        "sweep",
        help="edit sources x students x protocols (+ logit distillation), cached per cell; gain heatmap",
    )
    sw.add_argument("config", help="YAML config with a sweep: section, e.g. configs/sweep_tiny.yaml")
    sw.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. students.0.model.tiny.family=qwen2"
    )
    sw.set_defaults(fn=cmd_sweep)


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate every student of CONFIG on SEAL-format passages: base, passage, teacher, edit files",
    )
    ev.add_argument(
        "config", help="YAML config naming the students (and teacher), e.g. configs/squad_tiny.yaml"
    )
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.output_dir=runs")
    ev.add_argument("--data", required=True, help="SEAL-format JSON: [{title, context, questions}]")
    ev.add_argument(
        "--edits",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="SEAL-format edit files (records with 'completions'); several files, or --edits given several "
        "times: every file is a source",
    )
    ev.add_argument("--limit", type=int, default=0, help="evaluate the first N passages (0: all)")
    ev.add_argument(
        "--skip", type=int, default=0, help="leave out the first N passages (then --limit counts from there)"
    )
    ev.add_argument("--protocol", default="single", choices=["single", "cpt", "continual"])
    ev.add_argument("--n", type=int, default=0, help="cpt: passages per update; continual: steps (0: all)")
    ev.add_argument("--k", type=int, default=0, help="edits used per passage (0: all; continual: 1)")
    ev.add_argument(
        "--sources", default="base,passage,teacher,edits", help="comma list of base,passage,teacher,edits"
    )
    ev.add_argument("--name", help="output directory under run.output_dir (default eval-<protocol>-<time>)")
    ev.add_argument("--students", help="comma list: evaluate only these students of the config (default all)")
    ev.add_argument(
        "--metric", default="gold_logprob", choices=["em", "f1", "gold_logprob"], help="continual heatmap"
    )
    ev.add_argument(
        "--allow-trained-passages",
        action="store_true",
        help="score a trained teacher checkpoint (runs/<run>/teacher/round_<k>, k >= 1) even on passages its "
        "run trained it on (refused by default: such a score measures memorisation, not held-out skill)",
    )
    ev.set_defaults(fn=cmd_eval)

    pu = sub.add_parser(
        "push",
        help="publish a run's trained teacher with a generated model card: to the hub, or to a local folder",
    )
    pu.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/default")
    pu.add_argument("--round", type=int, help="which teacher/round_<k> (default: the last saved)")
    dest = pu.add_mutually_exclusive_group(required=True)
    dest.add_argument(
        "--repo-id", help="hub repository, e.g. you/teacher-seal (needs the network and a token)"
    )
    dest.add_argument("--to", metavar="DIR", help="write the files to this new local folder instead")
    pu.add_argument(
        "--adapter-only",
        action="store_true",
        help="the round's LoRA adapter only (teacher.train.method=lora)",
    )
    pu.add_argument("--private", action="store_true", help="create the hub repository as private")
    pu.set_defaults(fn=cmd_push)

    conf = sub.add_parser(
        "config",
        help="every config setting with its type, default and help (show); the bundled configs (list)",
    )
    conf_sub = conf.add_subparsers(dest="action", required=True)
    show = conf_sub.add_parser("show", help="print the settings (all, or those under SECTION)")
    show.add_argument("section", nargs="?", help="e.g. teacher, teacher.generation, students, reward")
    show.set_defaults(fn=cmd_config)
    listing = conf_sub.add_parser("list", help="the bundled configs, by name (usable wherever a CONFIG goes)")
    listing.set_defaults(fn=cmd_config_list)


def main(argv: list[str] | None = None) -> int:
    from core.config import ConfigError
    from core.distributed import RankError, current, shutdown
    from core.models import ModelLoadError
    from orchestrator.rundir import RunDirError
    from orchestrator.signals import Preempted, graceful

    args = build_parser().parse_args(argv)
    if args.command == "run" and args.config and "=" in args.config:  # an override, not a CONFIG
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        with graceful():  # SIGTERM/SIGINT: a clean stop (orchestrator/signals.py)
            return args.fn(args)
    except Preempted as exc:
        print(f"teachedit: stopped by {exc.name}", file=sys.stderr)
        return exc.exit_code
    except (ConfigError, ModelLoadError, RunDirError, FileNotFoundError, ValueError, RankError) as exc:
        message = " ".join(str(exc).split())  # one line, even for multi-line YAML parser messages
        env = current()
        tag = f" [rank {env.rank}]" if env.world_size > 1 else ""
        print(f"teachedit{tag}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teachedit: interrupted; completed records are saved. Continue with --resume.", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
