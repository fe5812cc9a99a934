"""TRL trainer arguments: the project's settings, then the user's ``trainer_args`` on top, validated by TRL.

Every TRL config the project builds (``SFTConfig`` for the ReST-EM teacher update, ``GRPOConfig`` for GRPO,
``GKDConfig`` for the sweep's distillation row) goes through :func:`build`: any field of that TRL class may be
set from the config (``teacher.train.trainer_args``, ``algorithm.grpo.trainer_args``,
``sweep.distill.trainer_args``): ``logging_steps``, ``warmup_steps``, ``gradient_checkpointing``,
``weight_decay``, ``optim``... An unknown field, a field the project must own, or a value TRL rejects is a
:class:`core.config.ConfigError` naming the config key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.config import ConfigError

# Set by the project for correctness; a trainer_args entry for them is refused with the reason.
OWNED = {
    "output_dir": "the project trains in a temporary folder and saves checkpoints itself",
    "save_strategy": "the project saves the teacher itself (safetensors, atomically)",
    "remove_unused_columns": "the reward and the pre-tokenized data need their columns",
    "completion_only_loss": "ReST-EM trains on the edit only (completion_mask), as SEAL",
    "deepspeed": "set teacher.train.deepspeed instead",
    "use_cpu": "follows run.device",
    "seed": "derived from run.seed",
    "data_seed": "derived from run.seed",
}


def check(cls: type, trainer_args: Mapping[str, Any] | None, where: str) -> None:
    """Refuse unknown or project-owned fields before any work starts."""
    if not trainer_args:
        return
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in trainer_args if k not in names)
    if unknown:
        raise ConfigError(
            f"{where}: {unknown} {'is not a field' if len(unknown) == 1 else 'are not fields'} of TRL's "
            f"{cls.__name__} (see its documentation for the fields it takes)"
        )
    owned = sorted(k for k in trainer_args if k in OWNED)
    if owned:
        raise ConfigError(f"{where}: {owned[0]} cannot be set here: {OWNED[owned[0]]}")


def build(cls: type, defaults: dict[str, Any], trainer_args: Mapping[str, Any] | None, where: str) -> Any:
    """``cls(**defaults, **trainer_args)``; TRL's own checks apply to the merged arguments."""
    check(cls, trainer_args, where)
    merged = {**defaults, **dict(trainer_args or {})}
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:
        if not trainer_args:
            raise
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: TRL's {cls.__name__} rejects {dict(trainer_args)}: {first}") from None
