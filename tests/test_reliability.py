"""Reliability and security of the command line (issue 12 items 1, 2, 3, 9), tried as a skeptical user would.

* No code runs from a checkpoint or cache: a crafted pickle given to every command that reads one is refused with one
  line, and its payload never runs.
* The interruption matrix: each method killed with SIGINT and SIGKILL mid-epoch, during validation and between
  stages, then ``--resume``d, ends with the weights and eval JSON of an uninterrupted run.
* Runs are never overwritten or mixed: the run lock, stale locks, failed saves, what ``--overwrite`` deletes.
* Errors in the right order and form: the paper profile checks the data before building a model; Ctrl-C says how
  to resume; bad checkpoints and folders get one line naming the fix.

Most commands run ``idclab.cli.main`` in a forked child of the test process (POSIX only): the child inherits the
imported libraries (a fresh interpreter costs ~9 s of CPU to import torch and open_clip), its stdout / stderr go to
files, it reports its exit status like the ``idclab`` executable (a ``SystemExit`` message is one stderr line with
status 1, any other exception prints its traceback), and a test-only hook can interrupt it at an exact point with a
real signal. Nothing in the library knows about these hooks. One test runs the real ``python -m idclab.cli`` and
interrupts it from outside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idclab import runs
from idclab.cli import build_parser
from idclab.cli import main as cli_main
from idclab.models import clip4idc, combiner, pic2word
from idclab.train import Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the test process (POSIX)")

STAGES = {"clip4idc": clip4idc.STAGES, "pic2word": pic2word.STAGES, "combiner": combiner.STAGES}
# Tiny budgets: 3 steps per stage, validation at step 2 (mid-stage) and at the end, a resume file every step.
TRAIN = ("--profile", "smoke", "--steps", "3", "--eval-every", "2", "--ckpt-every", "1", "--device", "cpu",
         "--precision", "fp32")
EVAL = {
    "clip4idc": lambda run: ["eval", "clip4idc", "--checkpoint", run, "--n", "4"],
    "pic2word": lambda run: ["eval", "cir", "--method", "pic2word", "--checkpoint", run, "--n", "12"],
    "combiner": lambda run: ["eval", "cir", "--method", "combiner", "--checkpoint", run, "--n", "12"],
}


# ----------------------------------------------------------------------------------------------------------------------
# Running the command line in a forked child
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: int  # the exit status; -N: killed by signal N
    stdout: str
    stderr: str
    message: str | None  # the SystemExit message the CLI printed (its one-line error), if any
    cpu: float  # seconds of CPU the child used

    @property
    def json(self):
        return json.loads(self.stdout)


def cli(*argv, hook=None) -> Outcome:
    """``idclab ARGV`` in a forked child; ``hook()`` runs in the child first (to install an interruption point)."""
    files = [tempfile.mkstemp(prefix="idclab-cli-") for _ in range(3)]
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(files[0][0], 1)
            os.dup2(files[1][0], 2)
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            torch.set_num_threads(1)  # as DataLoader workers do after a fork
            warnings.simplefilter("default")  # warnings reach stderr, as in a shell (pytest records them otherwise)
            warnings.showwarning = lambda msg, cat, fname, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(msg, cat, fname, lineno, line))
            if hook is not None:
                hook()
            try:
                cli_main([str(a) for a in argv])
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    os.write(files[2][0], str(e.code).encode())
                    code = 1
            except BaseException:  # noqa: BLE001 -- shown as the interpreter would
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    texts = []
    for fd, name in files:
        os.close(fd)
        texts.append(Path(name).read_text(errors="replace"))
        os.unlink(name)
    return Outcome(os.waitstatus_to_exitcode(status), texts[0], texts[1], texts[2] or None,
                   usage.ru_utime + usage.ru_stime)


def assert_one_line_error(out: Outcome, *fragments: str, commands: bool = False) -> None:
    """Exit status 1, no traceback, one line of error that contains ``fragments`` (``commands``: followed by
    indented commands to copy, as the missing-dataset hints give)."""
    assert out.code == 1, (out.code, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.message is not None and out.message.startswith("error: "), out.message
    lines = out.message.strip().splitlines()
    assert len(lines) == 1 or (commands and all(line.startswith(" ") or line.endswith(":") for line in lines[1:])), \
        out.message
    for f in fragments:
        assert f in out.message, (f, out.message)


# ----------------------------------------------------------------------------------------------------------------------
# Small runs shared by the tests (trained once per session)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


_REFERENCE: dict[str, Path] = {}


def reference_run(method: str, workdir: Path) -> Path:
    """An uninterrupted run of ``method`` (trained on first use)."""
    if method not in _REFERENCE:
        run = workdir / f"reference-{method}"
        out = cli("train", method, *TRAIN, "--out", run)
        assert out.code == 0, out.stderr[-3000:]
        _REFERENCE[method] = run
    return _REFERENCE[method]


def images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i + 20, np.uint8)).save(p)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# 1. No code runs from a checkpoint or a cache
# ----------------------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a crafted checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def craft(path: Path, marker: Path) -> Path:
    """A file that looks like an idclab checkpoint (or feature cache) but runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(header=dict(format=2, method="clip4idc", stage="caption"), model={}, names=["x"],
                    features=torch.zeros(1, 2), payload=Payload(marker)), path)
    return path


def test_the_crafted_file_really_runs_code_when_unpickled(tmp_path):
    """The guard of the test below: the payload does run under a plain pickle load (so its absence means refusal)."""
    marker = tmp_path / "ran"
    craft(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def _cache_file(cache_dir: Path) -> Path:
    found = sorted(cache_dir.glob("*.pt"))
    assert len(found) == 1, found
    return found[0]


def test_no_command_runs_code_from_a_crafted_checkpoint_or_cache(tmp_path, workdir):
    marker = tmp_path / "PAYLOAD-RAN"
    evil = craft(tmp_path / "evil.pt", marker)
    before, after = images(tmp_path / "imgs", 2)
    gallery = tmp_path / "gallery"
    images(gallery, 3)
    # A run folder whose best.pt is crafted (the selected checkpoint of run.json), and one with a crafted resume.pt.
    run = tmp_path / "run-best"
    craft(run / "caption" / "best.pt", marker)
    (run / "run.json").write_text(json.dumps(dict(method="clip4idc", stages={"caption": dict(selected="caption/best.pt")},
                                                  last_stage="caption")))
    resume = tmp_path / "run-resume"
    craft(resume / "mapping" / "resume.pt", marker)
    commands = {
        "eval clip --model": ["eval", "clip", "--model", evil, "--n", "10"],
        "eval clip4idc --checkpoint": ["eval", "clip4idc", "--checkpoint", evil, "--n", "2"],
        "caption --checkpoint": ["caption", before, after, "--checkpoint", evil],
        "eval cir pic2word --checkpoint": ["eval", "cir", "--method", "pic2word", "--checkpoint", evil, "--n", "4"],
        "eval cir combiner --checkpoint": ["eval", "cir", "--method", "combiner", "--checkpoint", evil, "--n", "4"],
        "retrieve --checkpoint": ["retrieve", "--method", "pic2word", "--checkpoint", evil, "--image", before,
                                  "--text", "make it red", "--gallery", gallery],
        "train clip4idc --init": ["train", "clip4idc", "--stage", "caption", "--init", evil, "--out",
                                  tmp_path / "o1", *TRAIN],
        "train combiner --init": ["train", "combiner", "--stage", "combiner", "--init", evil, "--out",
                                  tmp_path / "o2", *TRAIN],
        "train --resume (crafted resume.pt)": ["train", "pic2word", "--out", resume, "--resume", *TRAIN],
        "run folder with a crafted best.pt": ["eval", "clip4idc", "--checkpoint", run, "--n", "2"],
        "caption with that run folder": ["caption", before, after, "--checkpoint", run],
    }
    # The gallery feature caches: written by a real run, then replaced by a crafted file of the same name.
    p2w = reference_run("pic2word", workdir)
    ok = cli("retrieve", "--method", "pic2word", "--checkpoint", p2w, "--image", before, "--text", "make it red",
             "--gallery", gallery, "--cache-dir", tmp_path / "cache-r")
    assert ok.code == 0, ok.stderr[-3000:]
    craft(_cache_file(tmp_path / "cache-r"), marker)
    commands["retrieve --cache-dir"] = ["retrieve", "--method", "pic2word", "--checkpoint", p2w, "--image", before,
                                        "--text", "make it red", "--gallery", gallery, "--cache-dir",
                                        tmp_path / "cache-r"]
    ok = cli("eval", "cir", "--method", "image", "--n", "4", "--cache-dir", tmp_path / "cache-e")
    assert ok.code == 0, ok.stderr[-3000:]
    craft(_cache_file(tmp_path / "cache-e"), marker)
    commands["eval cir --cache-dir"] = ["eval", "cir", "--method", "image", "--n", "4", "--cache-dir",
                                        tmp_path / "cache-e"]
    failures = {}
    for name, argv in commands.items():
        out = cli(*argv)
        try:
            assert not marker.exists(), "the payload ran"
            assert_one_line_error(out, "refuses")
        except AssertionError as err:
            failures[name] = f"{err} | exit {out.code} | {(out.message or out.stderr[-400:]).strip()}"
    assert not failures, json.dumps(failures, indent=1)


# ----------------------------------------------------------------------------------------------------------------------
# 2. The interruption matrix
# ----------------------------------------------------------------------------------------------------------------------

POINTS = ("mid-epoch", "validation", "between-stages")


def interrupt_at(method: str, point: str, sig: int, log: Path):
    """A hook for :func:`cli`: send ``sig`` to the child itself at ``point``, writing where it fired to ``log``.

    mid-epoch: after step 2 of the first stage (its resume file written, the epoch not finished); validation: inside
    the last stage's mid-stage validation at step 2 (metrics computed, not yet recorded); between-stages: right after
    the first stage is recorded in run.json (for one-stage Pic2Word: after its only stage, before the command ends).
    """
    first, last = STAGES[method][0], STAGES[method][-1]

    def fire(**where):
        log.write_text(json.dumps(where))
        os.kill(os.getpid(), sig)

    def hook():
        if point == "mid-epoch":
            original = Trainer._after_step

            def after_step(self, bar, logs):
                original(self, bar, logs)
                if self.header["stage"] == first and self.step == 2:
                    fire(stage=first, step=self.step, batch_in_epoch=self.batch_in_epoch)
            Trainer._after_step = after_step
        elif point == "validation":
            original = Trainer._validate

            def validate(self):
                if self.header["stage"] == last and self.step == 2:
                    val_fn = self.val_fn

                    def interrupted(model):
                        metrics = val_fn(model)
                        fire(stage=last, step=self.step)
                        return metrics
                    self.val_fn = interrupted
                original(self)
            Trainer._validate = validate
        else:
            original = runs.record_stage

            def record_stage(run_dir, **kw):
                original(run_dir, **kw)
                if kw["stage"] == first:
                    fire(stage=first, recorded=True)
            runs.record_stage = record_stage

    return hook


def _weights(run: Path, stage: str, name: str) -> dict:
    state = runs.read(run / stage / name)
    return dict(model=state["model"], selection=state["selection"], step=state["step"])


def _stage_records(run: Path) -> dict:
    return {s: {k: v for k, v in e.items() if k != "seconds"} for s, e in runs.read_run(run)["stages"].items()}


def _eval(method: str, run: Path) -> dict:
    out = cli(*EVAL[method](run))
    assert out.code == 0, out.stderr[-3000:]
    return json.loads(out.stdout.replace(str(run), "RUN"))


_REFERENCE_EVAL: dict[str, dict] = {}


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("method", list(STAGES))
def test_interrupted_then_resumed_equals_uninterrupted(method, sig, point, workdir, tmp_path):
    reference = reference_run(method, workdir)
    if method not in _REFERENCE_EVAL:
        _REFERENCE_EVAL[method] = _eval(method, reference)
    run, log = tmp_path / "run", tmp_path / "fired.json"
    argv = ["train", method, *TRAIN, "--out", run]

    out = cli(*argv, hook=interrupt_at(method, point, sig, log))
    assert log.exists(), f"the run never reached {point}: {out.stderr[-2000:]}"
    if point == "mid-epoch":
        assert json.loads(log.read_text())["batch_in_epoch"] > 0  # really inside an epoch
    if sig == signal.SIGKILL:
        assert out.code == -signal.SIGKILL
    else:  # Ctrl-C: one message with the command that continues the run
        assert out.code == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "--resume" in out.message and f"idclab train {method}" in out.message, out.message

    resumed = cli(*argv, "--resume")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert not list(run.rglob("*.tmp")) and not (run / runs.LOCK_FILE).exists()
    assert _stage_records(run) == _stage_records(reference)
    for stage in STAGES[method]:
        for name in ("best.pt", "last.pt"):
            got, want = _weights(run, stage, name), _weights(reference, stage, name)
            assert (got["selection"], got["step"]) == (want["selection"], want["step"]), (stage, name)
            assert got["model"].keys() == want["model"].keys()
            unequal = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
            assert not unequal, (stage, name, unequal[:5])
        # The same steps logged and validated (a validation lost to the interruption would change the selection).
        got, want = (runs.read(r / stage / "resume.pt")["result"] for r in (run, reference))
        assert got["val_history"] == want["val_history"] and got["best"] == want["best"], stage
        assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]], stage
    assert _eval(method, run) == _REFERENCE_EVAL[method]


# ----------------------------------------------------------------------------------------------------------------------
# 3. Runs are never overwritten or mixed
# ----------------------------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_naming_the_first_and_deletes_nothing(tmp_path):
    """Process A trains (held at its first step); process B, even with --overwrite, is refused with A's pid and
    leaves A's files alone; A then finishes normally."""
    run, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    argv = ["train", "pic2word", *TRAIN, "--out", run]

    def hold_at_first_step():
        original = Trainer._after_step

        def after_step(self, bar, logs):
            original(self, bar, logs)
            if self.step == 1:
                ready.write_text(str(os.getpid()))
                deadline = time.time() + 300
                while not go.exists() and time.time() < deadline:
                    time.sleep(0.05)
        Trainer._after_step = after_step

    pid = os.fork()
    if pid == 0:  # process A
        code = 1
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")
            torch.set_num_threads(1)
            hold_at_first_step()
            cli_main([str(a) for a in argv])
            code = 0
        finally:
            os._exit(code)
    try:
        deadline = time.time() + 300
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "process A never reached its first step"
        a_pid = int(ready.read_text())
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
        assert (run / "mapping" / "resume.pt") in before
        for extra in ([], ["--overwrite"], ["--resume"]):
            b = cli(*argv, *extra)
            assert_one_line_error(b, f"pid {a_pid}", "another --out")
            now = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
            assert now == before, extra
    finally:
        go.write_text("")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert runs.read_run(run)["stages"]["mapping"]["steps"] == 3 and not (run / runs.LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_and_its_writers_temporary_files_removed(tmp_path):
    run, dead = tmp_path / "run", _dead_pid()
    (run / "mapping").mkdir(parents=True)
    (run / runs.LOCK_FILE).write_text(str(dead))
    stray = run / "mapping" / f".resume.pt.{dead}.0123abcd.tmp"  # a save cut short by SIGKILL
    stray.write_bytes(b"partial")
    other = run / "mapping" / ".notes.1.tmp"  # not that writer's
    other.write_text("mine")
    out = cli("train", "pic2word", *TRAIN, "--steps", "1", "--out", run)
    assert out.code == 0, out.stderr[-3000:]
    assert not stray.exists() and other.exists() and not (run / runs.LOCK_FILE).exists()
    assert runs.read_run(run)["stages"]["mapping"]["steps"] == 1


def test_a_lock_being_written_is_not_mistaken_for_a_stale_one(tmp_path):
    """A lock file that is still empty (its writer between creating and filling it) is waited for, not removed."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / runs.LOCK_FILE
    lock.write_text("")
    pid = os.fork()
    if pid == 0:  # the other writer: fills its lock after 0.3 s, then trains for a while
        try:
            time.sleep(0.3)
            lock.write_text(str(os.getpid()))
            time.sleep(5)
        finally:
            os._exit(0)
    try:
        with pytest.raises(RuntimeError, match=f"pid {pid}"):
            with runs.run_lock(run):
                pass
        assert lock.read_text() == str(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_failed_save_leaves_no_temporary_file_and_the_old_checkpoint(tmp_path, monkeypatch):
    target = runs.save(tmp_path / "best.pt", dict(header={}, model={"w": torch.ones(2)}))

    def broken_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")  # the disk filled up half way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        runs.save(target, dict(header={}, model={"w": torch.zeros(2)}))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["model"]["w"], torch.ones(2))


def test_a_failed_save_during_training_keeps_the_last_good_resume_file(tmp_path, monkeypatch):
    """A save that fails at step 2 (the disk is full) stops the run with the error; step 1's resume.pt is intact and
    there is no temporary file."""
    cfg = pic2word.config_for("shapes", "smoke", steps=3, ckpt_every=1, eval_every=0)
    real, calls = runs.save, []

    def failing(path, state):
        calls.append(Path(path).name)
        if Path(path).name == "resume.pt" and state.get("position", {}).get("step") == 2:
            tmp = Path(path).with_name(f".resume.pt.{os.getpid()}.deadbeef.tmp")
            tmp.write_bytes(b"half")
            tmp.unlink()  # as runs.save does on failure
            raise OSError(28, "No space left on device")
        return real(path, state)

    monkeypatch.setattr(runs, "save", failing)
    with pytest.raises(OSError, match="No space left"):
        pic2word.train(cfg, tmp_path / "run", progress=False, device="cpu")
    monkeypatch.undo()
    assert runs.read(tmp_path / "run" / "mapping" / "resume.pt")["position"]["step"] == 1
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / runs.LOCK_FILE).exists()
    resumed = pic2word.train(cfg, tmp_path / "run", resume=True, progress=False, device="cpu")
    assert resumed["mapping"].history[-1]["step"] == 3


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: use a read-only system path)."""
    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "run"
    for candidate in (Path("/sys/idclab-run"), Path("/proc/idclab-run")):
        try:
            candidate.mkdir()
        except OSError:
            return candidate
        candidate.rmdir()
    pytest.skip("no folder here refuses writes to this user")


def test_overwrite_deletes_only_idclabs_own_files(tmp_path):
    run = tmp_path / "run"
    first = cli("train", "pic2word", *TRAIN, "--steps", "1", "--out", run)
    assert first.code == 0, first.stderr[-3000:]
    mine = [run / "notes.md", run / "mapping" / "my_plot.png", run / "mapping" / "other.pt", run / "data" / "x.txt"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's")
    old = runs.read(run / "mapping" / "last.pt")["step"]
    again = cli("train", "pic2word", *TRAIN, "--steps", "2", "--out", run, "--overwrite")
    assert again.code == 0, again.stderr[-3000:]
    assert all(p.read_text() == "the user's" for p in mine)
    assert (old, runs.read(run / "mapping" / "last.pt")["step"]) == (1, 2)
    assert runs.read_run(run)["stages"]["mapping"]["steps"] == 2


def test_overwriting_a_stage_never_leaves_a_run_mixed(tmp_path):
    """Replacing stage 1 of a finished Combiner run un-records stage 2 (trained on the old stage 1): the run then
    holds stage 1 only, and asking for its Combiner says so instead of pairing it with the new CLIP."""
    run = tmp_path / "run"
    first = cli("train", "combiner", *TRAIN, "--steps", "1", "--out", run)
    assert first.code == 0, first.stderr[-3000:]
    assert list(runs.read_run(run)["stages"]) == ["finetune", "combiner"]
    again = cli("train", "combiner", *TRAIN, "--steps", "2", "--stage", "finetune", "--overwrite", "--out", run)
    assert again.code == 0, again.stderr[-3000:]
    assert "no longer records it" in again.stderr
    record = runs.read_run(run)
    assert list(record["stages"]) == ["finetune"] and record["last_stage"] == "finetune"
    assert record["stages"]["finetune"]["steps"] == 2
    out = cli("eval", "cir", "--method", "combiner", "--checkpoint", run, "--n", "4")
    assert_one_line_error(out, "no 'combiner' stage")
    redo = cli("train", "combiner", *TRAIN, "--steps", "1", "--stage", "combiner", "--overwrite", "--out", run)
    assert redo.code == 0, redo.stderr[-3000:]
    assert runs.read_run(run)["stages"]["combiner"]["init"] == "finetune/best.pt"


# ----------------------------------------------------------------------------------------------------------------------
# 9. Errors in the right order and form
# ----------------------------------------------------------------------------------------------------------------------

PAPER_WITHOUT_DATA = [
    ("clip4idc", "clevr", "clevr_change.py"),
    ("pic2word", "folder", "data_scripts/image_folder.py"),
    ("combiner", "cirr", "cirr.py"),
]


@pytest.mark.parametrize("method,dataset,hint", PAPER_WITHOUT_DATA, ids=[m for m, _, _ in PAPER_WITHOUT_DATA])
def test_paper_profile_checks_the_data_before_building_a_model(method, dataset, hint, tmp_path):
    from idclab import backbones

    def no_model():
        def refuse(*args, **kwargs):
            raise AssertionError("built a model before checking the data")
        backbones.load_clip = refuse

    start = time.perf_counter()
    out = cli("train", method, "--profile", "paper", "--dataset", dataset, "--root", tmp_path / "nonexistent",
              "--out", tmp_path / "run", hook=no_model)
    seconds = time.perf_counter() - start
    assert_one_line_error(out, hint, commands=True)
    assert not (tmp_path / "run").exists()  # nothing written either
    assert out.cpu < 5, f"{out.cpu:.1f} s of CPU to refuse a missing dataset ({seconds:.1f} s wall)"


def test_ctrl_c_on_the_real_command_says_how_to_resume(tmp_path):
    """SIGINT to ``python -m idclab.cli train`` (sent once its first resume file exists): exit status 1, no traceback,
    and the printed command parses to the same run with --resume."""
    run = tmp_path / "run"
    argv = ["train", "pic2word", "--profile", "smoke", "--steps", "100000", "--ckpt-every", "1", "--eval-every", "0",
            "--device", "cpu", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "idclab.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (run / "mapping" / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    lines = err.rstrip().splitlines()
    assert lines[-2].startswith("interrupted; the run is saved in"), lines[-3:]
    command = shlex.split(lines[-1].strip())
    assert command[:3] == ["idclab", "train", "pic2word"] and command[-1] == "--resume"
    args = build_parser().parse_args(command[1:])
    assert args.resume and args.out == run and args.steps == 100000
    assert runs.read(run / "mapping" / "resume.pt")["position"]["step"] >= 1


def test_user_errors_are_one_line_naming_the_fix(tmp_path, workdir):
    p2w, c4 = reference_run("pic2word", workdir), reference_run("clip4idc", workdir)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((c4 / "caption" / "best.pt").read_bytes()[:5000])
    not_a_run = tmp_path / "not-a-run"
    (not_a_run / "adapt").mkdir(parents=True)
    (not_a_run / "notes.txt").write_text("hello")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint at all")
    out_file = tmp_path / "a-file"
    out_file.write_text("")
    cases = {
        "truncated checkpoint": (["eval", "clip4idc", "--checkpoint", truncated], "truncated"),
        "text file as checkpoint": (["eval", "clip4idc", "--checkpoint", junk], "not a readable checkpoint"),
        "pic2word run to eval clip4idc": (["eval", "clip4idc", "--checkpoint", p2w], "idclab train clip4idc"),
        "pic2word run to caption": (["caption", *images(tmp_path / "imgs", 2), "--checkpoint", p2w],
                                    "idclab train clip4idc"),
        "clip4idc run to eval cir": (["eval", "cir", "--method", "pic2word", "--checkpoint", c4, "--n", "4"],
                                     "pic2word"),
        "folder that is not a run": (["eval", "clip4idc", "--checkpoint", not_a_run], "train one with"),
        "missing checkpoint": (["eval", "clip4idc", "--checkpoint", tmp_path / "nope"], "train one with"),
        "--out is a file": (["train", "pic2word", *TRAIN, "--out", out_file], "give a folder"),
        "read-only --out": (["train", "pic2word", *TRAIN, "--out", _unwritable(tmp_path)], "writable --out"),
        "--resume with nothing to resume": (["train", "pic2word", *TRAIN, "--out", tmp_path / "new", "--resume"],
                                            "drop --resume"),
        "--init of another method": (["train", "combiner", "--stage", "combiner", "--init", p2w, *TRAIN, "--out",
                                      tmp_path / "c"], "idclab train combiner"),
    }
    failures = {}
    for name, (argv, fix) in cases.items():
        out = cli(*argv)
        try:
            assert_one_line_error(out, fix)
        except AssertionError as err:
            failures[name] = f"{err} | exit {out.code} | {(out.message or out.stderr[-600:]).strip()}"
    assert not failures, json.dumps(failures, indent=1)
    assert not (tmp_path / "new").exists() and not (tmp_path / "c").exists()  # refused runs leave no folder
