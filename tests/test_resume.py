"""Runs killed with SIGKILL at every kind of point resume to exactly the records of an uninterrupted run.

The kills are real: ``python -m orchestrator run`` in a subprocess with ``TEACHEDIT_FAULT=POINT:N``
(core/faults.py) kills itself at the N-th pass through POINT. The reference run and every subprocess
use one intra-op thread, so all of them compute with the same floating-point reduction order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core import faults
from core.records import EditResult
from orchestrator.rundir import RunDir, RunDirError

from .conftest import CACHE, CONFIGS, ROOT

# The smoke config made smaller, rewarded on gold log-probability (so rewards are real numbers, not all 0),
# and keeping every context's best edit (threshold -1000) so the teacher is trained in round 0.
TINY = [
    f"run.cache_dir={CACHE}",
    "run.progress=false",
    "task.num_train_contexts=2",
    "task.num_heldout_contexts=1",
    "reward.score=logprob",
    "algorithm.threshold=-1000",
    "algorithm.rounds=1",
    # One edit at a time, so each kill point lands between known records. The batched loop's records are
    # persisted per chunk through the same path (tests/test_batched.py checks chunked persistence).
    "students.0.adapt.edit_batch_size=1",
    "students.1.adapt.edit_batch_size=1",
]
EDITS_PER_ROUND = (2 + 1) * 2  # (train + held-out contexts) x 2 edits


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_in_process(out: Path, name: str, extra: list[str] = ()) -> Path:
    from core.config import load_config
    from orchestrator.runner import Runner

    cfg = load_config(CONFIGS / "smoke.yaml", [*TINY, f"run.output_dir={out}", f"run.name={name}", *extra])
    Runner.new(cfg).run()
    return out / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run of the tiny config, in this process, single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_in_process(tmp_path_factory.mktemp("reference"), "ref")
    finally:
        torch.set_num_threads(before)


def cli(args: list[str], fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(out: Path, name: str, fault: str | None) -> subprocess.CompletedProcess:
    return cli([str(CONFIGS / "smoke.yaml"), *TINY, f"run.output_dir={out}", f"run.name={name}"], fault)


def resume(run: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return cli(["--resume", str(run)], fault)


def assert_killed(proc: subprocess.CompletedProcess, fault: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (
        f"{fault} was never reached (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def assert_finished(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- comparing run directories -------------------------------------------------------------------------------
def edit_records(run: Path, round_index: int) -> dict[tuple[str, bool], dict]:
    """Every edit record of a round by (edit key, held out); fails on a duplicate or an unreadable line."""
    lines = (run / "edits" / f"round_{round_index}.jsonl").read_text().splitlines()
    out: dict[tuple[str, bool], dict] = {}
    for line in lines:
        result = EditResult.from_dict(json.loads(line))  # every line is a complete record
        key, rec = (result.edit.key, result.heldout), result.to_dict()
        assert key not in out, f"duplicate record {key} in round {round_index}"
        out[key] = rec
    return out


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")  # wall time is the one thing allowed to differ
    return rows


def assert_same_records(run: Path, ref: Path) -> None:
    for k in (0, 1):
        got, want = edit_records(run, k), edit_records(ref, k)
        assert len(want) == EDITS_PER_ROUND
        assert got.keys() == want.keys(), f"round {k}: records lost or added"
        for key in want:
            assert got[key] == want[key], f"round {k} {key}: record differs from the uninterrupted run"
    assert metrics(run) == metrics(ref)
    assert not list(run.rglob("*.tmp")), "partial writes were cleaned up"
    assert (run / "teacher" / "round_1" / "model.safetensors").is_file()


# -- the kill tests ------------------------------------------------------------------------------------------
def test_reference_rewards_are_informative(reference):
    rewards = [r["reward"] for k in (0, 1) for r in edit_records(reference, k).values()]
    assert len(set(rewards)) > 2, "rewards are real numbers, so equal rewards below mean something"
    assert metrics(reference)[0]["kept"] == 2 and metrics(reference)[0]["teacher_loss"] is not None


def test_killed_at_every_kind_of_point_resumes_to_the_uninterrupted_records(reference, tmp_path):
    """One run, killed six times in a row at six kinds of point, then resumed to the end. (Each kind at
    other counts, e.g. a torn metrics line, from a fresh run: test_single_kill_then_resume, marked slow.)"""
    run = tmp_path / "killed"
    chain = [
        # (fault, what the run directory must show right after the kill)
        ("adapt:6", lambda: len(edit_records(run, 0)) == 1),  # mid-adaptation of the 2nd edit
        ("write:2", lambda: not (run / "edits/round_0.jsonl").read_bytes().endswith(b"\n")),  # torn line
        # 4 baseline scorings, then the torn edit is re-scored (2) and appended, then the next edit's first
        # student is scored and killed before its record is written; the torn tail was cut before appending
        ("score:7", lambda: len(edit_records(run, 0)) == 3),
        ("train:1", lambda: len(edit_records_tolerant(run, 0)) == EDITS_PER_ROUND),  # teacher SFT step 1
        (
            "checkpoint:1",  # teacher weights written to round_1.tmp, tokenizer not, folder not renamed
            lambda: (run / "teacher/round_1.tmp").is_dir() and not (run / "teacher/round_1").exists(),
        ),
        # round 1's first generate() call (round 0's edits are on disk): the next resume must load
        # teacher/round_1 from disk and write the very edits the uninterrupted run's in-memory teacher wrote
        ("generate:1", lambda: not (run / "edits/round_1.train.proposed.json").exists()),
    ]
    for i, (fault, check) in enumerate(chain):
        proc = start(tmp_path, "killed", fault) if i == 0 else resume(run, fault)
        assert_killed(proc, fault)
        assert check(), f"after {fault}: the run directory does not show the expected partial state"
    assert_finished(resume(run))
    assert_same_records(run, reference)


def edit_records_tolerant(run: Path, round_index: int) -> list[dict]:
    return RunDir(run).read_jsonl(f"edits/round_{round_index}.jsonl")


# generate:1/2 round 0 (train, held-out contexts), 3 round 1; adapt: the 1st step, mid round 0, in round 1;
# score:1 a baseline, 9 an adapted student; write:1 the first record, 7 round 0's metrics line, 9 a round-1
# record. (The tiny teacher's SFT is one step, so train:1 is the only train point.)
SINGLE_FAULTS = [
    "generate:1",
    "generate:2",
    "generate:3",
    "adapt:1",
    "adapt:13",
    "adapt:30",
    "score:1",
    "score:9",
    "train:1",
    "checkpoint:1",
    "write:1",
    "write:7",
    "write:9",
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", SINGLE_FAULTS)
def test_single_kill_then_resume(reference, tmp_path, fault):
    assert_killed(start(tmp_path, "one", fault), fault)
    assert_finished(resume(tmp_path / "one"))
    assert_same_records(tmp_path / "one", reference)


# -- preemption: SIGTERM / SIGINT, and one writer per run directory ---------------------------------------------
def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_stops_cleanly_and_resume_gives_the_uninterrupted_records(reference, tmp_path, signum):
    """How clusters preempt (SIGTERM, then SIGKILL after a grace period) and Ctrl-C: a real run is signalled
    mid-round; it exits within seconds with 128 + signal, leaves ``interrupted.json`` naming the command that
    resumes it and no lock; every record on disk is complete. While it ran, a second writer on the same
    directory was refused naming it. ``--resume`` then ends with exactly the uninterrupted run's records."""
    run = tmp_path / "preempted"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop(faults.ENV, None)
    # slow enough that it surely still runs when signalled, also when the second writer below takes long to
    # start on a loaded machine (at 0.2 s the whole run once finished first, under three other jobs)
    env[faults.PAUSE_ENV] = "adapt:1.0"
    args = [str(CONFIGS / "smoke.yaml"), *TINY, f"run.output_dir={tmp_path}", "run.name=preempted"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while _lines(run / "edits" / "round_0.jsonl") < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it was signalled: {proc.stderr.read()[-2000:]}"
        second = resume(run)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"being written by process {proc.pid}" in second.stderr.strip().splitlines()[-1]
        sent = time.time()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert took < 30, f"stopping took {took:.1f} s"
    assert "Traceback" not in err
    marker = json.loads((run / "interrupted.json").read_text())
    assert marker["signal"] == signal.Signals(signum).name
    assert marker["resume"] == f"teachedit run --resume {run}"
    assert f"Continue with: teachedit run --resume {run}" in err.strip().splitlines()[-1]
    assert not (run / ".lock").exists(), "the lock was released"
    assert marker["records"] == len(edit_records(run, 0)) >= 2  # complete lines only, none duplicated
    assert_finished(resume(run))
    assert not (run / "interrupted.json").exists(), "resume clears the marker"
    assert_same_records(run, reference)


# -- determinism ---------------------------------------------------------------------------------------------
def test_same_config_and_seed_give_the_same_rewards(reference, tmp_path, one_thread):
    again = run_in_process(tmp_path, "again")
    assert_same_records(again, reference)
    edits = json.loads((again / "edits" / "round_1.train.proposed.json").read_text())
    ref_edits = json.loads((reference / "edits" / "round_1.train.proposed.json").read_text())
    assert edits == ref_edits, "the trained teacher writes the same edits"


# -- pieces of resume ----------------------------------------------------------------------------------------
def test_torn_last_line_is_cut_before_the_next_append(tmp_path):
    rd = RunDir.create(tmp_path / "r")
    rd.append_jsonl("m.jsonl", {"a": 1})
    with open(rd.path / "m.jsonl", "ab") as f:
        f.write(b'{"a": 2, "b": [1, 2')  # a run killed mid-write
    rd.append_jsonl("m.jsonl", {"a": 3})
    assert rd.read_jsonl("m.jsonl") == [{"a": 1}, {"a": 3}]
    assert (rd.path / "m.jsonl").read_text() == '{"a": 1}\n{"a": 3}\n'
    # a file holding only a torn line
    (rd.path / "n.jsonl").write_bytes(b'{"x": ')
    rd.append_jsonl("n.jsonl", {"x": 1})
    assert (rd.path / "n.jsonl").read_text() == '{"x": 1}\n'


def test_partial_writes_are_removed_on_resume(tmp_path):
    rd = RunDir.create(tmp_path / "r")
    rd.write_text("config.yaml", "x: 1\n")
    (rd.path / "summary.json.tmp").write_text("{")
    (rd.path / "teacher" / "round_1.tmp").mkdir()
    (rd.path / "teacher" / "round_1.tmp" / "model.safetensors").write_bytes(b"half")
    (rd.path / "teacher" / "round_0").mkdir()
    removed = rd.remove_partial_writes()
    assert sorted(p.name for p in removed) == ["round_1.tmp", "summary.json.tmp"]
    assert (rd.path / "teacher" / "round_0").is_dir() and (rd.path / "config.yaml").is_file()


def test_resume_refuses_to_continue_without_the_teacher_checkpoint(reference, tmp_path):
    import shutil

    from orchestrator.runner import Runner

    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # round 0 done, round 1 not
    shutil.rmtree(run / "teacher" / "round_1")
    with pytest.raises(RunDirError, match="teacher checkpoint .* is missing"):
        Runner.resume(run).run()


def test_resume_with_more_rounds_extends_a_finished_run_to_the_records_of_a_longer_run(
    reference, tmp_path, one_thread
):
    """``teachedit run --resume RUN algorithm.rounds=2`` on a finished one-round run: round 1, scored as the
    final round, becomes a training round (its records kept, the teacher trained on its kept edits) and round
    2 is scored, to exactly the records and teacher of a run created with two rounds."""
    import shutil

    from safetensors.torch import load_file

    longer = run_in_process(tmp_path, "two", ["algorithm.rounds=2"])
    run = tmp_path / "extended"
    shutil.copytree(reference, run)
    assert not (run / "teacher" / "round_2").exists() and metrics(run)[1]["kept"] == 0
    assert_finished(cli(["--resume", str(run), "algorithm.rounds=2"]))  # the override after --resume counts
    for k in (0, 1, 2):
        assert edit_records(run, k) == edit_records(longer, k), f"round {k}"
    assert metrics(run) == metrics(longer) and metrics(run)[1]["kept"] == 2
    got = load_file(run / "teacher" / "round_2" / "model.safetensors")
    want = load_file(longer / "teacher" / "round_2" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    assert "rounds: 2" in (run / "config.yaml").read_text(), "a later --resume continues the longer run"

    from orchestrator.runner import Runner

    with pytest.raises(RunDirError, match=r"has scored rounds 0\.\.2 .* algorithm.rounds >= 3"):
        Runner.resume(run, ["algorithm.rounds=1"]).run()
    assert len(metrics(run)) == 3, "a refused resume changes nothing"
    proc = cli(["--resume", str(run), str(CONFIGS / "smoke.yaml")])
    assert proc.returncode == 2 and "give key=value overrides only, not CONFIG" in proc.stderr


def test_fault_spec_parsing_and_counting(monkeypatch):
    assert faults.parse("adapt:5, write:2") == {"adapt": 5, "write": 2}
    for bad in ["adapt", "adapt:0", "adapt:x", "nowhere:1"]:
        with pytest.raises(faults.FaultSpecError):
            faults.parse(bad)
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("adapt")  # unset: nothing happens
    assert faults.trainer_callbacks() == []


def test_fault_kills_at_the_nth_pass_and_not_before():
    code = (
        "from core import faults\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    faults.point('score', before_kill=lambda: print('dying', flush=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), faults.ENV: "score:3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["0", "1", "2", "dying"]


def test_run_records_its_provenance(reference):
    """summary.json and config.yaml say what produced the run: versions, git commit, command line."""
    import subprocess as sp

    from core.config import load_config

    prov = json.loads((reference / "summary.json").read_text())["provenance"]
    for pkg in ("torch", "transformers", "trl", "peft", "deepspeed", "datasets"):
        assert prov["versions"][pkg], pkg
    head = sp.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert prov["git"]["commit"] == head
    text = (reference / "config.yaml").read_text()
    assert text.startswith("# command: ") and f"# git: {head}" in text
    assert load_config(reference / "config.yaml").run.name == "ref"  # the header keeps it a loadable config
