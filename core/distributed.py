"""Ranks under a launcher (``deepspeed`` or ``torchrun``): process-group start, rank-0 decisions, gathers.

The code reads only the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); hosts and ports belong to the launch command. Without a launcher every helper here is the
single-process identity (``on_rank0(fn)`` is ``fn()``, ``all_gather(x)`` is ``[x]``) and DeepSpeed is never
imported, so the default run does not need it.

Rules the rest of the code follows under a launcher:

- every rank runs the same loop; what depends on the run directory (proposed edits, records already scored,
  completed rounds) is decided by rank 0 and broadcast (:func:`on_rank0`);
- only rank 0 writes run files (``RunDir(path, writer=False)`` on the others);
- a step that may fail on one rank ends in :func:`all_gather` or :func:`on_rank0`, which re-raise the failure
  on every rank, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Variables through which launchers (torchrun, deepspeed, MPI) tell a process it is one of several ranks.
LAUNCHER_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "CROSS_RANK",
    "CROSS_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist() -> Any | None:
    """``torch.distributed`` when a process group is up, else None. It never imports torch: a process that
    has not imported it has no process group (so the CLI's config-error path stays light)."""
    mod = sys.modules.get("torch.distributed")
    return mod if mod is not None and mod.is_initialized() else None


def launched() -> bool:
    """True when a launcher started this process as one of its ranks (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


_TIMEOUT_MINUTES: float | None = None  # what init_from_launcher gave the process group (None: DeepSpeed's)


def timeout_minutes() -> float | None:
    """The collective timeout this process group was started with (None: DeepSpeed's default)."""
    return _TIMEOUT_MINUTES


def init_from_launcher(timeout_minutes: float | None = None) -> DistEnv:
    """Start the process group from the launcher's environment (gloo on CPU, nccl on GPUs) before any model,
    ``TrainingArguments`` or DeepSpeed engine is built. Without a launcher: nothing happens.

    ``timeout_minutes`` (``run.dist_timeout_minutes``) is how long a collective waits for the slowest rank
    before it fails, e.g. while rank 0 alone samples a round's edits; None keeps DeepSpeed's default."""
    if not launched():
        return DistEnv()
    if _dist() is not None:
        return current()
    # DeepSpeed compiles its shm_comm op on the first start; keep the build inside the project.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    import deepspeed
    import torch
    import torch._dynamo  # noqa: F401  (ZeRO-3's zero.Init fails with a signature mismatch without it)
    from deepspeed.accelerator import get_accelerator

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # DeepSpeed's accelerator (DS_ACCELERATOR, else detected) places the engines: nccl on its GPUs, else gloo.
    backend = "nccl" if get_accelerator().device_name() == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU
    kwargs: dict[str, Any] = {}
    if timeout_minutes is not None:
        from datetime import timedelta

        kwargs["timeout"] = timedelta(minutes=timeout_minutes)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **kwargs)
    global _TIMEOUT_MINUTES
    _TIMEOUT_MINUTES = timeout_minutes
    env = current()
    log.info(
        "rank %d of %d (local rank %d, %s, collectives time out after %s)",
        env.rank,
        env.world_size,
        env.local_rank,
        backend,
        f"{timeout_minutes:g} min" if timeout_minutes is not None else "DeepSpeed's default",
    )
    return env


def current() -> DistEnv:
    """This process's place among the ranks (rank 0 of 1 without a process group)."""
    dist = _dist()
    if dist is None:
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return current().is_main


def shutdown() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


class RankError(RuntimeError):
    """Another rank failed; raised on every rank so that all of them stop at the same point."""


def _portable(exc: BaseException) -> BaseException:
    """An exception to send to the other ranks: the same type with the same message when that type can be
    rebuilt from a message (ConfigError, RunDirError, FileNotFoundError, ...), else a RankError."""
    kind = type(exc)
    try:
        pickle.dumps(kind)  # an importable class: the other ranks can name it
        return kind(str(exc))
    except Exception:
        return RankError(f"{kind.__name__}: {exc}")


def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank. An exception on rank 0 is raised on
    every rank (so a refused run directory stops all ranks, not only rank 0)."""
    dist = _dist()
    if dist is None:
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, fn())]
        except Exception as exc:
            box = [(False, _portable(exc))]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def ranks_missing(path: Path) -> list[int]:
    """The ranks on which ``path`` does not exist (a collective: every rank calls it, every rank gets the
    list). Several nodes without a shared file system see different run directories."""
    return [r for r, seen in enumerate(all_gather(path.exists())) if not seen]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    dist = _dist()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ranks(fn: Callable[[], T], run: bool = True) -> list[T | None]:
    """Run ``fn`` where ``run`` is true, then gather the results; if any rank failed, raise its exception
    on every rank. Returns the per-rank results (None where ``run`` was false)."""
    try:
        mine: tuple[bool, Any] = (True, fn() if run else None)
    except Exception as exc:
        mine = (False, _portable(exc))
    gathered = all_gather(mine)
    for rank, (ok, value) in enumerate(gathered):
        if not ok:
            if rank == current().rank:
                raise value
            raise RankError(f"rank {rank} failed: {type(value).__name__}: {value}") from value
    return [value for _, value in gathered]


def share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's contiguous share of n items; shares differ in size by at most one."""
    return rank * n // world_size, (rank + 1) * n // world_size


def all_reduce(t: Any) -> None:
    """Sum a tensor over the ranks, in place (nothing to do in one process)."""
    dist = _dist()
    if dist is not None:
        dist.all_reduce(t)


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def clean_env() -> dict[str, str]:
    """This process's environment without the launcher's variables: a child started with it is a plain
    single process (an HF Trainer there does not try to join the ranks' process group)."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
