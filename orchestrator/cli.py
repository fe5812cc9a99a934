"""The ``teachedit`` command line (also ``python -m orchestrator``). The only module that prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _setup_logging(verbose: bool, logfile: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.report import round_table
    from orchestrator.runner import Runner

    if args.resume:
        _quiet_libraries()  # before preflight reads data files (datasets' progress bars)
        runner = Runner.resume(args.resume, args.overrides)
    else:
        if args.config is None:
            print(
                "teachedit run: give a CONFIG (e.g. configs/default.yaml) or --resume RUN_DIR",
                file=sys.stderr,
            )
            return 2
        cfg = load_config(args.config, args.overrides)  # config errors come back fast
        _quiet_libraries()
        runner = Runner.new(cfg)
    _setup_logging(args.verbose, runner.rundir.path / "run.log")
    print(f"run directory: {runner.rundir.path}")
    summary = runner.run()
    print()
    print(round_table(summary))
    print()
    print(
        f"wall time {summary['wall_seconds']:.0f}s; results in {runner.rundir.path}/ "
        f"(summary.json, metrics.jsonl, edits/, teacher/, reward_curve.png)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teachedit", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a config: teacher → students → reward → teacher update, per round")
    run.add_argument("config", nargs="?", help="YAML config, e.g. configs/default.yaml")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.rounds=3")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    run.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    from orchestrator.config import ConfigError
    from orchestrator.models import ModelLoadError
    from orchestrator.rundir import RunDirError

    args = build_parser().parse_args(argv)
    if args.command == "run" and args.config and "=" in args.config and not args.resume:
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return args.fn(args)
    except (ConfigError, ModelLoadError, RunDirError, FileNotFoundError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line, even for multi-line YAML parser messages
        print(f"teachedit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teachedit: interrupted; completed records are saved. Continue with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
