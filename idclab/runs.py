"""The lifecycle every idclab method follows: configs with options, run folders, checkpoints, loading.

Each method module (``models/clip4idc.py``, ``models/pic2word.py``, ``models/combiner.py``, ``shapes_clip.py``)
offers the same four things:

* ``config_for(dataset, profile=None, **options) -> config`` -- the preset of a (dataset, profile), with the common
  options of :func:`apply_options` (``pretrained``, ``batch_size``, ``steps``, ``<stage>_steps``, ``precision``,
  ``num_workers``, ``seed``, ``eval_every``, ``ckpt_every``) and its own;
* ``train(config, out_dir, *, stages=None, root=None, resume=False, overwrite=False, device=None, ...)
  -> {stage: TrainResult}``;
* ``load(run_or_checkpoint, *, stage=None, device=None)`` -- the trained model, built without downloading weights
  where the checkpoint holds them all;
* ``STAGES`` -- its stage names, in training order.

A **run folder** (``OUT``) holds ``run.json`` (method, config, and per stage the selected checkpoint) and one folder
per stage with ``best.pt`` (the checkpoint selected on validation), ``last.pt`` (the final weights) and
``resume.pt`` (weights, optimiser, scheduler, RNG and data position: what ``--resume`` continues from). Paths inside
a run are relative, so a run folder can be moved (Colab -> Drive -> laptop) and still evaluates.

A **checkpoint** is a dict of tensors and plain Python values, read with ``torch.load(weights_only=True)``: loading
one never runs code. It starts with a header::

    {"header": {"idclab": version, "format": 2, "method", "stage", "config": {...}, "architecture": {...}},
     "model": state_dict, "selection": {val metrics that chose it} or None, ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import time
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from idclab import __version__
from idclab.configs import to_dict

__all__ = [
    "FORMAT", "RUN_FILE", "COMMON_OPTIONS", "UnsafeCheckpointError", "apply_options", "make_header", "save",
    "read", "load_plain", "read_header", "resolve_checkpoint", "read_run", "record_stage", "relative", "resolve_relative",
    "run_lock", "prepare_run", "check_stages", "stage_entry", "summary", "process_rank",
]

FORMAT = 2  # checkpoint layout version (1: the pickled layout before this module)
RUN_FILE = "run.json"
LOCK_FILE = ".idclab.lock"
OWNED = ("best.pt", "last.pt", "resume.pt", "config.json")  # what --overwrite may delete in a stage folder

# ----------------------------------------------------------------------------------------------------------------------
# Configs: the options every method takes
# ----------------------------------------------------------------------------------------------------------------------

# option -> the config field it sets, wherever that field exists (the config itself, its stages, its encoder)
COMMON_OPTIONS = dict(pretrained="pretrained", batch_size="batch_size", steps="max_steps", precision="precision",
                      num_workers="num_workers", seed="seed", eval_every="eval_every", ckpt_every="ckpt_every")
# --pretrained none on a backbone that carries its own weights: the same architecture with random weights
RANDOM_WEIGHTS_OF = {"shapes-clip": "shapes-clip-arch"}


def apply_options(config: Any, stages: tuple[str, ...] = (), **options) -> Any:
    """``config`` with the common options applied; None values are ignored (not given), 0 is a value.

    A common option sets its field everywhere it exists: on the config, on each stage config named in ``stages``
    and on a nested ``encoder``. ``<stage>_steps`` sets one stage's ``max_steps``. ``pretrained="none"`` means
    random weights (dry runs, tests, machines without network).
    """
    for key, value in options.items():
        if value is None:
            continue
        if key.endswith("_steps") and key[:-len("_steps")] in stages:
            stage = key[:-len("_steps")]
            config = dataclasses.replace(config, **{stage: _set(getattr(config, stage), "max_steps", value, key)})
            continue
        if key not in COMMON_OPTIONS:
            raise ValueError(f"Unknown option {key!r}; the common options are {sorted(COMMON_OPTIONS)}"
                             + (f" and {[s + '_steps' for s in stages]}" if stages else "") + ".")
        name = COMMON_OPTIONS[key]
        if key == "pretrained":
            value = None if str(value).lower() == "none" else value
        parts = [("", config)] + [(s, getattr(config, s)) for s in (*stages, "encoder")
                                  if dataclasses.is_dataclass(getattr(config, s, None))]
        hits = 0
        for part, obj in parts:
            if any(f.name == name for f in dataclasses.fields(obj)):
                new = _set(obj, name, value, key)
                if key == "pretrained" and value is None and getattr(new, "backbone", None) in RANDOM_WEIGHTS_OF:
                    new = dataclasses.replace(new, backbone=RANDOM_WEIGHTS_OF[new.backbone])
                config = new if part == "" else dataclasses.replace(config, **{part: new})
                hits += 1
        if not hits:
            raise ValueError(f"Option {key!r} does not apply to {type(config).__name__}.")
    return config


def _set(obj: Any, name: str, value: Any, option: str) -> Any:
    if name in ("batch_size", "max_steps") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"--{option.replace('_', '-')} must be an integer >= 1, got {value!r}.")
    if name in ("eval_every", "ckpt_every", "num_workers") and (not isinstance(value, int) or value < 0):
        raise ValueError(f"--{option.replace('_', '-')} must be an integer >= 0, got {value!r}.")
    return dataclasses.replace(obj, **{name: value})


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: header, save, read
# ----------------------------------------------------------------------------------------------------------------------


class UnsafeCheckpointError(ValueError):
    """A file that only loads by unpickling arbitrary objects (it could run code): refused."""


def make_header(method: str, stage: str, config: Any, architecture: dict) -> dict:
    """The header every checkpoint starts with: what the run is, without guessing from folder layout."""
    return dict(idclab=__version__, format=FORMAT, method=method, stage=stage,
                config=to_dict(config) if dataclasses.is_dataclass(config) else dict(config),
                architecture=dict(architecture))


def save(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically: a temporary file unique to this writer, then a rename. A failed save leaves
    neither a broken checkpoint nor a stray temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_plain(path: str | Path, *, map_location: str | torch.device = "cpu", what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` with one clear error: :class:`UnsafeCheckpointError` for a file that
    only loads by unpickling Python objects (loading it could run code), ValueError for anything unreadable."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line),
                      text.splitlines()[0] if text else "")
        if "Unsupported global" in text:  # the file names a Python callable to run while loading
            detail = detail.split("Please use")[0].replace("WeightsUnpickler error: ", "").strip()
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that only load by running code from the file, so idclab refuses it "
                f"({detail[:200]}). idclab {what}s hold tensors and plain values only; retrain, or convert a file "
                "you trust to a plain state dict.") from None
        raise ValueError(f"{path} is not a readable {what} (not a torch file, or damaged): {detail[:200]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable {what} (truncated or not a torch file?): "
                         f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None


def load_released(path: str | Path, *, trust: bool = False):
    """A file saved by a paper's own scripts (the authors' released weights), read with ``weights_only=True``.

    One that holds other pickled Python objects is refused unless ``trust=True`` (``--trust-checkpoint``):
    unpickling can run code, so trust only a file from a source you trust, such as the authors' release.
    """
    try:
        return load_plain(path, what="released checkpoint")
    except UnsafeCheckpointError:
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects besides tensors; loading it could run code, so idclab refuses "
                "it. If it is the authors' released file and you trust its source, pass trust=True "
                "(--trust-checkpoint).") from None
    return torch.load(path, map_location="cpu", weights_only=False)  # explicitly trusted by the caller


def read(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read an idclab checkpoint with ``weights_only=True``; clear errors for anything else."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a checkpoint file, or resolve a run folder with "
                                "runs.resolve_checkpoint(path).")
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    state = load_plain(path, map_location=map_location, what="checkpoint")
    if not isinstance(state, dict) or "header" not in state or "model" not in state:
        raise ValueError(f"{path} is not an idclab checkpoint (no header): write one with an idclab `train` command.")
    fmt = state["header"].get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise ValueError(f"{path} was written by a newer idclab (checkpoint format {fmt}); upgrade idclab.")
    return state


def read_header(path: str | Path) -> dict:
    """The header of a checkpoint file, or of a run folder's selected checkpoint."""
    return read(resolve_checkpoint(path))["header"]


# ----------------------------------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------------------------------


def read_run(run_dir: str | Path) -> dict | None:
    """``run.json`` of a run folder, or None where there is none."""
    f = Path(run_dir) / RUN_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as err:
        raise ValueError(f"{f} is not valid JSON ({err}); the run record is damaged.") from None


def process_rank() -> int:
    """This process's rank under ``torchrun`` (its ``RANK`` variable), else 0. Only rank 0 writes the run folder
    (run.json, the lock, checkpoints); the other processes train alongside it and read what it wrote."""
    return int(os.environ.get("RANK", "0"))


def record_stage(run_dir: str | Path, *, method: str, config: Any, stage: str, entry: dict) -> None:
    """Record a stage's outcome in ``run.json`` (paths relative to the run folder), written atomically by rank 0
    only under ``torchrun``."""
    if process_rank() != 0:
        return
    run_dir = Path(run_dir)
    run = read_run(run_dir) or dict(idclab=__version__, method=method, stages={})
    if run.get("method") != method:
        raise ValueError(f"{run_dir} holds a {run.get('method')} run, not {method}; use another --out.")
    run["config"] = to_dict(config)
    run["stages"][stage] = entry
    run["last_stage"] = stage  # what load(run) gives without a stage
    _write_run(run_dir, run)


def _write_run(run_dir: Path, run: dict) -> None:
    """Write ``run.json`` atomically (a temporary file unique to this writer, then a rename)."""
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


def relative(path: str | Path, start: str | Path) -> str:
    """``path`` relative to the folder ``start`` (so it survives moving both together)."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def resolve_relative(value: str, start: str | Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else Path(start) / p


def resolve_checkpoint(path: str | Path, stage: str | None = None, *, method: str | None = None) -> Path:
    """A checkpoint file, or a run folder -> the selected checkpoint of ``stage`` (default: the last stage trained).

    Run folders: ``run.json`` names each stage's selected checkpoint; a stage folder without it (or an old run)
    falls back to ``best.pt``, then ``last.pt``. ``method``: refuse a checkpoint of another method.
    """
    path = Path(path)
    hint = f"idclab train {method} --out DIR" if method else "an idclab `train` command"
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint or run folder at {path}; train one with {hint}.")
    if path.is_dir():
        recorded = (read_run(path) or {}).get("method")
        if method is not None and recorded not in (None, method):
            raise ValueError(f"{path} holds a {recorded} run, not {method}; pass one written by `idclab train "
                             f"{method}`.")
        path = _selected(path, stage, hint)
    if method is not None:
        header = read(path)["header"]
        if header["method"] != method:
            raise ValueError(f"{path} is a {header['method']} checkpoint ({header['stage']}), not {method}; pass "
                             f"one written by `idclab train {method}`.")
        if stage is not None and header["stage"] != stage:
            raise ValueError(f"{path} is the {header['stage']!r} stage of a {method} run, not {stage!r}.")
    return path


def _selected(run_dir: Path, stage: str | None, hint: str) -> Path:
    run = read_run(run_dir)
    if run is not None and run.get("stages"):
        stages = run["stages"]
        if stage is None:
            stage = run.get("last_stage", list(stages)[-1])
        if stage not in stages:
            raise FileNotFoundError(f"The run in {run_dir} has no {stage!r} stage (it has {list(stages)}).")
        chosen = resolve_relative(stages[stage]["selected"], run_dir)
        if not chosen.is_file():
            raise FileNotFoundError(f"{run_dir}/{RUN_FILE} selects {chosen}, which is missing: was the run folder "
                                    "copied only in part?")
        return chosen
    for folder in ([run_dir / stage] if stage else []) + [run_dir]:
        for name in ("best.pt", "last.pt"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"{run_dir} holds no idclab run (no {RUN_FILE}, best.pt or last.pt); train one with "
                            f"{hint}.")


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Only one process writes a run folder: a lock file holding the writer's pid (a stale one is taken over).
    Under ``torchrun`` rank 0 holds it for the whole job; the other ranks of the same job do not take it."""
    if process_rank() != 0:
        yield
        return
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_FILE
    created = not run_dir.exists()
    _make_run_folder(run_dir)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = _lock_owner(lock)
            if pid and pid != os.getpid() and _alive(pid):
                raise RuntimeError(f"Another process (pid {pid}) is writing the run in {run_dir}; wait for it or use "
                                   f"another --out (remove {lock} if that process is gone).") from None
            if pid:  # stale: its writer died, perhaps in the middle of a save
                for tmp in run_dir.rglob(f".*.{pid}.*.tmp"):
                    tmp.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        except OSError as err:
            raise PermissionError(f"Cannot write to {run_dir} ({err.strerror}); choose a writable --out.") from None
    else:
        raise RuntimeError(f"Could not take the lock {lock}; remove it if no other process is training there.")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _make_run_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {run_dir} is a file; give a folder for the run.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"Cannot create the run folder {run_dir} ({err.strerror}); choose a writable --out."
                              ) from None


def _lock_owner(lock: Path) -> int:
    """The pid in a lock file; 0 if it is unreadable or stays empty (a writer between creating and filling it gets
    a moment to finish)."""
    for _ in range(20):
        try:
            text = lock.read_text().strip()
        except OSError:
            return 0
        if text:
            return int(text) if text.isdigit() else 0
        time.sleep(0.05)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run(run_dir: str | Path, stages: tuple[str, ...], *, resume: bool, overwrite: bool) -> None:
    """Refuse to train ``stages`` over an existing run of them unless ``resume`` or ``overwrite``; say so when there
    is nothing to resume. ``overwrite`` deletes only idclab's own files in those stage folders."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("Choose --resume (continue the run) or --overwrite (start it again), not both.")
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {run_dir} is a file; give a folder for the run.")
    if run_dir.exists() and not os.access(run_dir, os.W_OK):
        raise PermissionError(f"Cannot write to {run_dir}; choose a writable --out.")
    existing = [p for s in stages for p in (run_dir / s / n for n in OWNED) if p.exists()]
    recorded = [s for s in ((read_run(run_dir) or {}).get("stages") or {}) if s in stages]
    if resume:
        if not recorded and not any(p.name == "resume.pt" for p in existing):
            raise FileNotFoundError(f"Nothing to resume in {run_dir} (no resume.pt or recorded stage of {list(stages)}"
                                    "); drop --resume to start a new run.")
        return
    if (existing or recorded) and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a run of {recorded or [existing[0].parent.name]}; pass "
                              "--resume to continue it, --overwrite to replace it, or choose another --out.")
    if process_rank() == 0:  # under torchrun the other ranks check the same folder but leave the deleting to rank 0
        for p in existing:
            p.unlink(missing_ok=True)
        _forget_stages(run_dir, stages)


def _forget_stages(run_dir: Path, stages: tuple[str, ...]) -> None:
    """Drop ``stages`` from ``run.json`` -- and the stages trained on them (their ``init`` lies in one of those
    folders), which would otherwise stay recorded on top of weights that no longer exist: a run is never mixed."""
    run = read_run(run_dir)
    if not run or not run.get("stages"):
        return
    gone = [s for s, e in run["stages"].items()
            if s in stages or (e.get("init") and Path(e["init"]).parts[0] in stages)]
    dependents = [s for s in gone if s not in stages]
    if dependents:
        warnings.warn(f"{run_dir}: {dependents} was trained on the {list(stages)} stage being replaced, so run.json "
                      f"no longer records it; train it again (--stage {dependents[0]} --overwrite).", stacklevel=3)
    if not gone:
        return
    run["stages"] = {s: e for s, e in run["stages"].items() if s not in gone}
    if run.get("last_stage") in gone:
        run["last_stage"] = list(run["stages"])[-1] if run["stages"] else None
    _write_run(run_dir, run)


def check_stages(stages, all_stages: tuple[str, ...]) -> tuple[str, ...]:
    """``stages`` (None: all) as a tuple in training order; unknown names are refused."""
    if stages is None:
        return all_stages
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    unknown = [s for s in stages if s not in all_stages]
    if unknown or not stages:
        raise ValueError(f"stages must be a non-empty subset of {all_stages}, got {list(stages)}.")
    return tuple(s for s in all_stages if s in stages)


def stage_entry(run_dir: str | Path, result, **extra) -> dict:
    """What ``run.json`` records of a finished stage (paths relative to the run folder)."""
    return dict(selected=relative(result.selected, run_dir), best=result.best, seconds=round(result.seconds, 1),
                steps=result.history[-1]["step"] if result.history else 0, **extra)


def summary(results: dict, out_dir: str | Path | None = None) -> dict:
    """The JSON every ``idclab train`` prints: per stage its steps, time, validation choice and checkpoint."""
    report = {}
    for stage, r in results.items():
        report[stage] = dict(steps=r.history[-1]["step"] if r.history else 0, seconds=round(r.seconds, 1),
                             selected_on_val=r.best,
                             checkpoint=None if r.selected is None else str(r.selected))
    return dict(out=None if out_dir is None else str(out_dir), stages=report)
