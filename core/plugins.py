"""User plugins named in a config: ``reward.name: mypkg.rewards:length_aware_gain``, ``task.name:
mypkg.tasks:MyTask``.

A plugin is *code the user installed* (a module on ``sys.path``: pip-installed, or on ``PYTHONPATH``), named by
``module:attribute``. The config holds only that name: nothing in a config is evaluated, and a name without
``:`` is always a built-in registry entry. Config validation loads and checks every plugin a config names
(a bad one is a :class:`~core.config.ConfigError` naming the field); the registry it extends
(:func:`orchestrator.rewards.reward_fn`, :func:`orchestrator.tasks.build_task`) registers it under the full
name on first use, so every later lookup (the loop, ``eval``, ``sweep``, ``styles``, a resumed run, every rank
under the launcher) goes through the same table as the built-ins.
See docs/plugins.md for a worked example.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

# module path (dotted identifiers) ':' attribute (one identifier)
_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class PluginError(ValueError):
    """A plugin named in a config cannot be loaded; the message names the field, the problem and the fix."""


def is_plugin(name: str) -> bool:
    """A registry name that points at user code (``module:attribute``) rather than a built-in entry."""
    return ":" in name


def load_plugin(spec: str, field: str) -> Any:
    """Import ``module`` of ``spec = "module:attribute"`` and return the attribute.

    Raises :class:`PluginError` naming ``field`` when the name is malformed, the module cannot be imported
    (or raises on import) or lacks the attribute."""
    if not _SPEC.match(spec):
        raise PluginError(
            f"{field}: '{spec}' is not a plugin name; write package.module:attribute (e.g. "
            "mypkg.rewards:my_reward), or a built-in name without ':'"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PluginError(
            f"{field}: cannot import module '{module_name}' ({exc}); install the package that holds it "
            "or add its folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise PluginError(
            f"{field}: importing '{module_name}' raised {type(exc).__name__}: {exc}; fix the module"
        ) from exc
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:20]
        raise PluginError(f"{field}: module '{module_name}' has no attribute '{attr}' (it has: {public})")
    return getattr(module, attr)


def load_reward_plugin(spec: str, field: str = "reward.name") -> Any:
    """The user's reward function ``spec``, checked: it takes what the built-in rewards take,
    ``(baseline, adapted, score)`` (two :class:`~core.records.StudentScore` and the configured ``reward.score``),
    and returns a float. :func:`orchestrator.rewards.reward_fn` registers it under ``spec`` on first use."""
    fn = load_plugin(spec, field)
    if not callable(fn):
        raise PluginError(f"{field}: '{spec}' is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(object(), object(), "em")
    except TypeError:
        raise PluginError(
            f"{field}: '{spec}' must accept (baseline, adapted, score) like the built-in rewards "
            f"(orchestrator/rewards.py); its signature is {inspect.signature(fn)}"
        ) from None
    except ValueError:  # no signature (a builtin): let the first call tell
        pass
    return fn


def load_task_plugin(spec: str, field: str = "task.name") -> Any:
    """The user's task class ``spec``, checked: it is constructed with the run's
    :class:`~core.config.TaskConfig` and implements :class:`core.task.Task` (contexts, QA prompt, training
    items, corpora). :func:`orchestrator.tasks.build_task` registers it under ``spec`` on first use."""
    from core.task import Task

    cls = load_plugin(spec, field)
    if not isinstance(cls, type):
        raise PluginError(f"{field}: '{spec}' is a {type(cls).__name__}, not a class")
    if not issubclass(cls, Task):
        raise PluginError(
            f"{field}: '{spec}' is not a core.task.Task; subclass it (or a built-in task such as "
            "orchestrator.tasks.squad.SquadTask), see docs/plugins.md"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise PluginError(f"{field}: '{spec}' does not implement {missing} (see core.task.Task)")
    return cls
