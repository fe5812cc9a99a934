"""What produced a result: package versions, the project's version and git commit, and the command line.

Written into ``summary.json`` and ``config.yaml`` (as a comment header) of every run, and into every
benchmark's results JSON, so a figure can be traced to the code and libraries that made it.
"""

from __future__ import annotations

import functools
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "trl", "peft", "deepspeed", "datasets", "accelerate", "gguf")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("teachedit", *PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, Any] | None:
    """The checkout's commit and whether it had uncommitted changes; None outside a git checkout (a pip
    install) or without git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git": git_commit(),
        "python": platform.python_version(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


def yaml_header() -> str:
    """``provenance()`` as YAML comment lines (``config.yaml`` must stay a loadable config)."""
    p = provenance()
    git = p["git"]
    lines = [
        f"# command: {p['command']}",
        f"# git: {git['commit'] + (' (uncommitted changes)' if git['dirty'] else '') if git else 'none'}",
        "# versions: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items() if v is not None),
    ]
    return "\n".join(lines) + "\n"
