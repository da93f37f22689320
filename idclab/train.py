"""One small trainer for every idclab stage (CLIP pretraining, CLIP4IDC adaptation and captioning, Pic2Word, Combiner).

What it does, and nothing else:

* mixed precision on GPUs -- bf16 where supported, else fp16 with a gradient scaler; fp32 master weights always
  (autocast never touches the stored weights); fp32 on the CPU;
* gradient accumulation; gradient clipping; AdamW with warm-up + cosine/linear/constant schedule, or the update and
  whole-run schedules of BERT's optimiser (``bias_correction=False``, ``decay_all=True``, ``schedule="..._whole_run"``)
  that CLIP4IDC's reference uses;
* a tqdm bar showing the loss; a ``history`` of logged values to plot;
* three files per run folder (``idclab.runs``): ``best.pt`` (weights chosen on **validation** metrics -- the
  trainer never sees a test split), ``last.pt`` (the final weights) and ``resume.pt`` (weights, optimiser,
  scheduler, scaler, all RNG states and the data position), written periodically, before the end-of-run
  validation and on Ctrl-C / kernel interrupt / SIGTERM (what Colab and cluster schedulers send before they kill a
  process); all hold tensors and plain values only (``weights_only=True``);
  **exact resume**: a run interrupted mid-epoch and resumed ends with bit-identical weights to an uninterrupted
  one (``tests/test_train.py``);
* validation every ``eval_every`` steps via a user function;
* the same code under ``torchrun`` (DDP): ``torchrun --nproc_per_node 4 -m idclab.cli train ...``. Each process
  takes its GPU from ``LOCAL_RANK`` (:func:`train_device`) and loads ``batch_size`` samples per micro-batch from its
  own shard of the data, so the global batch is ``batch_size * world_size * grad_accum``; every rank validates the
  same (synchronised) weights, and rank 0 alone writes the run folder;
* data loading that keeps a GPU fed: on CUDA, ``num_workers=None`` (the default) decodes and resizes in
  ``min(8, CPUs)`` worker processes into pinned memory; on the CPU it loads in the training process. Datasets that
  draw random augmentations from torch's global generator in ``__getitem__`` (Pic2Word's crops without precomputed
  features, the Combiner's FashionIQ caption choice with a trainable image tower) draw them in the workers
  instead: resume is then exact only with ``num_workers=0``.

Contract with the caller: ``loss_fn(model, batch) -> loss`` (or ``(loss, {name: float})``), and datasets whose
item ``i`` is a deterministic function of ``i`` -- or of ``i`` and the epoch, for a dataset with a ``set_epoch(epoch)``
method, which the trainer calls before each epoch (also a resumed one) -- so that the data position alone restores
the data stream. Randomness inside ``loss_fn`` (dropout, augmentation with ``torch``) is restored from the saved RNG
states.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from idclab import runs
from idclab.configs import pick_device, save_json, to_dict

__all__ = ["TrainConfig", "Trainer", "TrainResult", "AdamNoBiasCorrection", "default_param_groups", "SCHEDULES",
           "train_device", "loader_workers", "Terminated"]

# Learning-rate schedules, all after a linear warm-up of ``warmup_steps``. "cosine" / "linear" restart their progress
# after the warm-up; the "_whole_run" ones are the BERT-era schedules of CLIP4IDC's reference (progress over the whole
# run, warm-up starting from 0): see _schedule.
SCHEDULES = ("cosine", "linear", "constant", "cosine_whole_run", "linear_whole_run")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int  # optimiser steps to run (epochs follow from the dataset size)
    batch_size: int  # samples per micro-batch (per process under DDP)
    lr: float
    grad_accum: int = 1  # micro-batches per optimiser step
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # one of SCHEDULES (see _schedule): warm-up, then cosine / linear / constant
    bias_correction: bool = True  # Adam's bias correction of m and v; False: BertAdam's update (CLIP4IDC's reference)
    decay_all: bool = False  # weight decay on every parameter but biases (the BERT convention); False: matrices only
    max_grad_norm: float | None = None  # global gradient-norm clipping
    precision: str = "auto"  # "auto" (bf16/fp16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None: min(8, CPUs) on CUDA, 0 elsewhere (loader_workers)
    log_every: int = 10  # steps between history entries
    eval_every: int | None = None  # steps between validations (None: only at the end)
    ckpt_every: int | None = None  # steps between periodic resume files (None: only at the end / on interrupt)
    ckpt_minutes: float | None = None  # also write the resume file when this many minutes passed since the last
    select_metric: str | None = None  # validation metric that picks best.pt
    select_mode: str = "max"  # "max" | "min"
    patience: int | None = None  # early stopping: stop after this many validations in a row without a better
    #                              select_metric (None: never stop early); needs select_metric
    progress: bool = True  # show a tqdm bar

    def __post_init__(self):
        checks = [
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be 'auto', 'fp32', 'bf16' or 'fp16'"),
            (self.select_mode in ("max", "min"), "select_mode must be 'max' or 'min'"),
            (0 <= self.warmup_steps <= self.max_steps, "warmup_steps must lie in [0, max_steps]"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1 validations (None: no early stop)"),
            (self.patience is None or self.select_metric is not None, "patience needs a select_metric to watch"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}.")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", ...} every log_every steps
    val_history: list[dict] = field(default_factory=list)  # {"step", **metrics} at each validation
    best: dict | None = None  # the val entry that chose best.pt
    stopped_early: bool = False  # True when ``patience`` validations in a row did not improve the selection metric
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def selected(self) -> Path | None:
        """The checkpoint this stage hands on: the one chosen on validation, else the final weights."""
        return self.best_checkpoint or self.last_checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# Data order that can be resumed mid-epoch
# ----------------------------------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """A fresh permutation per epoch, seeded by (seed, epoch), sharded by rank, starting at micro-batch ``start``."""

    def __init__(self, n: int, *, seed: int, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world: int = 1):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        per_rank = (n // (world * batch_size)) * batch_size  # drop the ragged tail so every rank steps together
        self.indices = order[rank * per_rank:(rank + 1) * per_rank][start * batch_size:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    return n // (world * batch_size)


# ----------------------------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    """Every RNG state as tensors and plain values (checkpoints load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), gauss=float(gauss)))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------------


class _LossModule(torch.nn.Module):
    """Routes ``loss_fn`` through ``forward`` so that DDP sees the call and synchronises gradients."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over ``train_data``.

    Args:
        model: any ``nn.Module``; only parameters with ``requires_grad`` are optimised.
        loss_fn: ``(model, batch) -> loss`` or ``(loss, {name: value})``.
        train_data: a map-style dataset whose items are deterministic per index.
        config: :class:`TrainConfig`.
        out_dir: where ``best.pt``, ``last.pt``, ``resume.pt`` and ``config.json`` go (``None``: keep nothing).
        collate_fn: for the DataLoader.
        val_fn: ``(model) -> {metric: float}`` on a validation split; runs every ``eval_every`` steps and at the end.
        param_groups: optimiser parameter groups (e.g. a smaller learning rate for CLIP); default: weight decay on
            matrices only, none on biases, norms, embeddings and scalars.
        header: the checkpoint header (:func:`idclab.runs.make_header`: method, stage, config, architecture),
            written at the top of every checkpoint.
        on_step: ``(step, logs)`` called after each optimiser step (live plots, early stopping by raising).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], Any],
        train_data: Dataset,
        *,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        collate_fn: Callable | None = None,
        val_fn: Callable[[torch.nn.Module], dict] | None = None,
        param_groups: list[dict] | None = None,
        header: dict | None = None,
        on_step: Callable[[int, dict], None] | None = None,
        device: str | torch.device | None = None,
    ):
        if len(train_data) < 1:
            raise ValueError("The training dataset is empty.")
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.train_data = train_data
        self.collate_fn = collate_fn
        self.val_fn = val_fn
        self.header = header or runs.make_header("custom", "train", {}, {})
        self.on_step = on_step

        self.rank, self.world, _ = _init_distributed()
        self.device = train_device(device)
        if self.world > 1 and self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if _batches_per_epoch(len(train_data), config.batch_size, self.world) < 1:
            raise ValueError(
                f"The dataset ({len(train_data)} items) is smaller than one global micro-batch "
                f"({config.batch_size} x {self.world} processes); lower the batch size (--batch-size)."
            )

        _seed_everything(config.seed)
        self.model = model.to(self.device)
        self.wrapped = _LossModule(self.model, loss_fn)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(self.wrapped, device_ids=ids)

        groups = (param_groups if param_groups is not None else
                  default_param_groups(self.model, config.weight_decay, decay_all=config.decay_all))
        adam = torch.optim.AdamW if config.bias_correction else AdamNoBiasCorrection
        self.optimizer = adam(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                              weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config))
        self.amp_dtype = _amp_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        # Data position and bookkeeping, all restored on resume.
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches of this epoch consumed by completed optimiser steps
        self.best_value: float | None = None
        self.stale = 0  # validations in a row without a better selection metric (early stopping)
        self.result = TrainResult()
        self._rng_at_step = _rng_state()
        self._saved_at = time.time()

    # -- public ------------------------------------------------------------------------------------------------------

    def fit(self, *, resume: bool | str | Path = False) -> TrainResult:
        """Train to ``max_steps``. ``resume``: True continues from ``out_dir/resume.pt`` if it exists (a stage that
        never started starts fresh), or a path to a resume file."""
        if resume is True or resume == "auto":
            resume = self.out_dir / "resume.pt" if self.out_dir and (self.out_dir / "resume.pt").exists() else None
        if resume:
            self._load(Path(resume))
        if self.out_dir is not None and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json(self._config_record(), self.out_dir / "config.json")
        with _sigterm_as_interrupt():
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg = self.config
        start_time = time.time()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not cfg.progress or self.rank != 0,
                   dynamic_ncols=True)
        try:
            self._validate_pending()
            while self.step < cfg.max_steps and not self.result.stopped_early:
                self._run_epoch(bar)
            # The trained weights are safe before the end-of-run validation (which may fail: no Java, Ctrl-C).
            self._save_resume(self._rng_at_step)
        except KeyboardInterrupt as err:
            if self.out_dir is not None:
                # No barrier: the other processes may already be gone (torchrun stops them all on a signal).
                self._save_resume(self._rng_at_step, barrier=False)
                why = "Terminated (SIGTERM)" if isinstance(err, Terminated) else "Interrupted"
                bar.write(f"{why} at step {self.step}; saved {self.out_dir / 'resume.pt'}. Continue with "
                          "--resume (Python: resume=True).", file=sys.stderr)  # stdout carries the CLI's JSON
            raise
        finally:
            bar.close()
        if self.val_fn is not None and (not self.result.val_history or self.result.val_history[-1]["step"] != self.step):
            self._validate()
        if self.out_dir is not None:
            self.result.last_checkpoint = self._save_weights(self.out_dir / "last.pt", selection=None)
            self._save_resume(_rng_state())
        self.result.seconds += time.time() - start_time
        return self.result

    # -- the loop ----------------------------------------------------------------------------------------------------

    def _run_epoch(self, bar) -> None:
        cfg = self.config
        if hasattr(self.train_data, "set_epoch"):  # per-epoch random draws (e.g. which caption), resumed exactly
            self.train_data.set_epoch(self.epoch)
        sampler = ResumableSampler(len(self.train_data), seed=cfg.seed, epoch=self.epoch, batch_size=cfg.batch_size,
                                   start=self.batch_in_epoch, rank=self.rank, world=self.world)
        # A private generator keeps the DataLoader from drawing on the global torch RNG (that would break resume).
        # Seeded by the data position, so that worker processes (if any) start from the same state on resume.
        generator = torch.Generator().manual_seed(hash((cfg.seed, self.epoch, self.batch_in_epoch)) % 2**62)
        loader = DataLoader(self.train_data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=self.collate_fn,
                            num_workers=loader_workers(cfg.num_workers, self.device), drop_last=True,
                            generator=generator, pin_memory=self.device.type == "cuda")
        self.wrapped.train()
        micro = 0
        logs_sum: dict[str, float] = {}
        for batch in loader:
            batch = _to_device(batch, self.device)
            sync = (micro + 1) % cfg.grad_accum == 0
            ctx = self.wrapped.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.wrapped(batch)
                loss, logs = (out if isinstance(out, tuple) else (out, {}))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Loss is {loss.item()} at step {self.step}; lower the learning rate or "
                                         "check the inputs.")
            self.scaler.scale(loss / cfg.grad_accum).backward()
            micro += 1
            for k, v in {"loss": loss.item(), **logs}.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / cfg.grad_accum
            if not sync:
                continue
            with _no_sigterm_between():  # weights, step, data position and RNG change together
                self._optimizer_step()
                self.batch_in_epoch += cfg.grad_accum
                self._rng_at_step = _rng_state()
            self._after_step(bar, logs_sum)
            logs_sum = {}
            if self.step >= cfg.max_steps or self.result.stopped_early:
                return
        # The epoch ends; micro-batches that do not fill a whole accumulation are dropped (as with drop_last).
        self.optimizer.zero_grad(set_to_none=True)
        self.epoch += 1
        self.batch_in_epoch = 0

    def _optimizer_step(self) -> None:
        cfg = self.config
        if cfg.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _after_step(self, bar, logs: dict) -> None:
        cfg = self.config
        logs = {**logs, "lr": self.scheduler.get_last_lr()[0]}
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
            self.result.history.append({"step": self.step, "epoch": self.epoch, **logs})
        if self.val_fn is not None and cfg.eval_every and self.step % cfg.eval_every == 0:
            self._validate()
        due = cfg.ckpt_every and self.step % cfg.ckpt_every == 0
        if cfg.ckpt_minutes and time.time() - self._saved_at >= 60 * cfg.ckpt_minutes:
            due = True
        if due:
            self._save_resume(self._rng_at_step)
        if self.on_step is not None:
            self.on_step(self.step, logs)

    def _validate_pending(self) -> None:
        """Run a validation that an interruption cut short: Ctrl-C inside it saves the position after its step but
        not its entry, so a resumed run would otherwise select ``best.pt`` from fewer validations than an
        uninterrupted one. (At ``max_steps`` the end-of-run validation does it.)"""
        cfg, done = self.config, self.result.val_history
        due = self.val_fn is not None and cfg.eval_every and 0 < self.step < cfg.max_steps
        if due and self.step % cfg.eval_every == 0 and (not done or done[-1]["step"] != self.step):
            self._validate()

    def _validate(self) -> None:
        model = self.model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            metrics = dict(self.val_fn(model))
        model.train(was_training)
        entry = {"step": self.step, **metrics}
        self.result.val_history.append(entry)
        cfg = self.config
        if cfg.select_metric is None:
            return
        if cfg.select_metric not in metrics:
            raise KeyError(f"select_metric {cfg.select_metric!r} is not among the validation metrics {list(metrics)}.")
        value = float(metrics[cfg.select_metric])
        better = self.best_value is None or (value > self.best_value if cfg.select_mode == "max" else value < self.best_value)
        self.stale = 0 if better else self.stale + 1
        self.result.stopped_early = cfg.patience is not None and self.stale >= cfg.patience
        if better:
            self.best_value = value
            self.result.best = entry
            if self.out_dir is not None:
                self.result.best_checkpoint = self._save_weights(self.out_dir / "best.pt", selection=entry)

    # -- checkpoints -------------------------------------------------------------------------------------------------

    def _config_record(self) -> dict:
        return dict(train=to_dict(self.config), header=self.header, world_size=self.world)

    def _save_weights(self, path: Path, *, selection: dict | None) -> Path:
        """A weights-only checkpoint (``best.pt`` / ``last.pt``): header, model, the validation entry that chose it."""
        if self.rank == 0:
            runs.save(path, dict(header=self.header, model=_cpu_state(self.model), selection=selection,
                                 step=self.step))
        if self.world > 1:
            dist.barrier()
        return path

    def _save_resume(self, rng: dict, *, barrier: bool = True) -> None:
        """``resume.pt``: everything exact resume needs (weights, optimiser, scheduler, scaler, RNG, data position)."""
        if self.out_dir is None:
            return
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            runs.save(self.out_dir / "resume.pt", dict(
                header=self.header, model=_cpu_state(self.model), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng,
                position=dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch),
                best_value=self.best_value, stale=self.stale,
                result=dict(history=self.result.history, val_history=self.result.val_history, best=self.result.best),
                train=to_dict(self.config), world_size=self.world))
        self._saved_at = time.time()
        if self.world > 1 and barrier:
            dist.barrier()

    def _load(self, path: Path) -> None:
        state = runs.read(path)
        if "optimizer" not in state:
            raise ValueError(f"{path} holds weights only; resume from the run's resume.pt (pass --resume).")
        saved = state["train"]
        mine = to_dict(self.config)
        ignore = {"max_steps", "progress", "eval_every", "ckpt_every", "ckpt_minutes", "log_every", "num_workers",
                  "patience"}
        defaults = to_dict(TrainConfig(max_steps=1, batch_size=1, lr=0.0))  # for settings added after a file's run
        diff = {k for k in mine if k not in ignore and saved.get(k, defaults[k]) != mine[k]}
        if diff:
            raise ValueError(
                f"Cannot resume {path}: it was trained with other settings for {sorted(diff)} "
                f"(saved {[saved.get(k) for k in sorted(diff)]}, now {[mine[k] for k in sorted(diff)]}). "
                "Resume with the same config, or start a new run in another out_dir."
            )
        if state.get("world_size", 1) != self.world:
            raise ValueError(f"{path} was written by {state.get('world_size')} processes; resume with the same number.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        pos = state["position"]
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch_in_epoch"]
        self.best_value = state["best_value"]
        self.stale = state.get("stale", 0)
        self.result.stopped_early = self.config.patience is not None and self.stale >= self.config.patience
        self.result.history = list(state["result"]["history"])
        self.result.val_history = list(state["result"]["val_history"])
        self.result.best = state["result"]["best"]
        if self.result.best is not None and (path.parent / "best.pt").is_file():
            self.result.best_checkpoint = path.parent / "best.pt"  # chosen by the process that validated it
        _set_rng_state(state["rng"])
        self._rng_at_step = state["rng"]


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def is_bias(name: str) -> bool:
    """Whether a parameter name is a bias (its last component contains "bias": ``fc.bias``, ``attn.in_proj_bias``)."""
    return "bias" in name.rsplit(".", 1)[-1]


def default_param_groups(model: torch.nn.Module, weight_decay: float, *, decay_all: bool = False) -> list[dict]:
    """Two groups: with and without weight decay.

    ``decay_all=False`` (idclab's default): decay on matrices (>= 2-D weights) only; none on biases, norms,
    embeddings, scalars, positional tables. ``decay_all=True``: decay on every parameter except biases, the rule of
    the BERT-era code that CLIP4IDC's reference inherits (it exempts parameters by name, and CLIP's norms, embeddings
    and logit scale do not match the names it exempts).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if decay_all:
            skip = is_bias(name)
        else:
            skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or is_bias(name)
        (no_decay if skip else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """Adam with decoupled weight decay and **no bias correction**: the update of BERT's ``BertAdam``, which
    CLIP4IDC's reference trains with. Per parameter p with gradient g, at learning rate lr (schedule applied)::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2           (m, v start at 0 and are never rescaled)
        p = p - lr (m / (sqrt(v) + eps) + weight_decay p)

    Against Adam's update (eps aside) step t is scaled by (1 - b1^t) / sqrt(1 - b2^t), a factor that tends to 1:
    at the first step 0.71 with betas (0.9, 0.98) and 3.16 with (0.9, 0.999); the warm-up keeps those steps small.
    Groups may set ``lr``, ``betas``, ``eps`` and ``weight_decay``.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("AdamNoBiasCorrection: lr, eps and weight_decay must be >= 0 and betas in [0, 1).")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamNoBiasCorrection does not take sparse gradients.")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                if wd:
                    p.mul_(1 - lr * wd)  # = subtracting lr * wd * p (the old p) from the update, as BertAdam does
                p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)
        return loss


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor of optimiser step ``step`` (0-based) under ``cfg.schedule``.

    * "cosine" / "linear" / "constant": linear warm-up (step + 1) / W over the W = ``warmup_steps`` first steps, then
      the progress p = (step - W) / (max_steps - W) **restarts** at 0: factor 0.5 (1 + cos(pi p)), 1 - p, or 1.
    * "cosine_whole_run" / "linear_whole_run": the BERT-era schedules of CLIP4IDC's reference, on the whole-run
      progress x = step / max_steps: warm-up step / W (the first step has lr 0 and only moves the optimiser's
      moments), then 0.5 (1 + cos(pi x)) -- no restart, so right after a 10 % warm-up the factor is already
      0.5 (1 + cos(0.1 pi)) = 0.976 -- or (1 - x) / (1 - W / max_steps), linear from 1 to 0.
    """
    total, warm = cfg.max_steps, cfg.warmup_steps

    def factor(step: int) -> float:
        if cfg.schedule.endswith("_whole_run"):
            if step < warm:
                return step / warm
            if cfg.schedule == "cosine_whole_run":
                return 0.5 * (1.0 + math.cos(math.pi * min(step / total, 1.0)))
            return max(0.0, (total - step) / max(1, total - warm))
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warm) / max(1, total - warm), 1.0)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":  # bf16 only where the hardware has it (Ampere and newer): emulated bf16 is slow
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 autocast needs a CUDA device; use precision='fp32' or 'bf16' on the CPU.")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def train_device(device: str | torch.device | None = None) -> torch.device:
    """The device of a training process: ``device`` if given, else CUDA, Apple's MPS or the CPU. A CUDA device
    without an index is this process's own GPU: ``cuda:$LOCAL_RANK`` under ``torchrun``, else ``cuda:0``."""
    device = pick_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes: ``num_workers`` if given; else min(8, this process's CPUs) on CUDA (decoding
    and resizing outside the training process keep a GPU fed), 0 elsewhere."""
    if num_workers is not None:
        return num_workers
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus)


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``Trainer.fit``: handled as Ctrl-C (resume.pt is written, then the exception propagates)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt); the previous handler comes back
    after. Colab, Slurm and Kubernetes send SIGTERM some seconds before they kill a process: time enough to save.
    Handlers can only be set from the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _SIGTERM["deferring"]:
            _SIGTERM["pending"] = True  # raised when the optimiser step's bookkeeping is complete
            return
        raise Terminated(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    _SIGTERM.update(deferring=False, pending=False)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_SIGTERM = dict(deferring=False, pending=False)


@contextlib.contextmanager
def _no_sigterm_between():
    """SIGTERM waits until the block ends, so resume.pt never holds updated weights with the old step or data
    position; then it is raised as usual."""
    _SIGTERM["deferring"] = True
    try:
        yield
    finally:
        _SIGTERM["deferring"] = False
    if _SIGTERM["pending"]:
        _SIGTERM["pending"] = False
        raise Terminated("SIGTERM")


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not isinstance(batch, str):
        items = [_to_device(v, device) for v in batch]
        return type(batch)(items) if not hasattr(batch, "_fields") else type(batch)(*items)
    return batch

