"""What a `pip install` user gets: every package, the bundled data, and the configs, found by name from any folder
(pyproject.toml maps configs/ to orchestrator/configs)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.config import ConfigError, bundled_configs, find_config, load_config

from .conftest import CONFIGS, ROOT


def test_a_bundled_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("default", "default.yaml", "configs/default.yaml"):
        assert find_config(name) == CONFIGS / "default.yaml"
    assert find_config("paper/squad_qwen2.5-7b_seal") == CONFIGS / "paper" / "squad_qwen2.5-7b_seal.yaml"
    assert set(bundled_configs()) >= {"default", "smoke", "real_cpu", "paper/arc_llama1b"}
    with pytest.raises(ConfigError, match="config file not found: defualt. .*bundled config: .*default"):
        find_config("defualt")


def test_relative_data_paths_of_a_bundled_config_resolve_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("real_cpu")
    assert Path(cfg.task.path) == ROOT / "orchestrator" / "data" / "squad" / "edits_qwen2.5-7b_train.json"
    ds = load_config("ds_tiny")
    assert Path(ds.teacher.train.deepspeed) == CONFIGS / "deepspeed" / "zero3.json"
    mine = tmp_path / "orchestrator" / "data" / "squad"
    mine.mkdir(parents=True)
    (mine / "edits_qwen2.5-7b_train.json").write_text(
        (ROOT / "orchestrator/data/squad/passages.json").read_text()
    )
    assert load_config("real_cpu").task.path == "orchestrator/data/squad/edits_qwen2.5-7b_train.json", (
        "a file under the current folder wins"
    )


def test_the_wheel_holds_every_package_the_data_and_the_configs(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("teachedit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in ("teacher", "student", "orchestrator"):
            assert rel in names, f"{rel} is missing from the wheel: add its package to pyproject.toml"
    for f in CONFIGS.rglob("*"):
        if f.suffix in (".yaml", ".json"):
            assert f"orchestrator/configs/{f.relative_to(CONFIGS).as_posix()}" in names
    assert "orchestrator/data/squad/passages.json" in names and "orchestrator/data/arc/README.md" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import orchestrator, pathlib; from core.config import load_config; "
        "c = load_config('real_cpu'); p = pathlib.Path(c.task.path); "
        "assert pathlib.Path(orchestrator.__file__).is_relative_to(pathlib.Path.cwd().parent / 'site'), orchestrator.__file__; "
        "assert p.is_file() and p.is_relative_to(pathlib.Path.cwd().parent / 'site'), p; print('ok')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.stdout.strip() == "ok", run.stderr[-2000:]
