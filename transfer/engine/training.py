"""Adversarial training runs: ``train(config, out_dir)`` and ``load_run`` (``TrainConfig`` is in ``config``).

``train(config, out_dir)`` writes a run directory (``docs/architecture.md``): ``config.json`` (the
resolved config), ``history.json``, ``metrics.json``, ``checkpoint.pt`` (last epoch), ``best.pt``
(best robust validation accuracy, Rice et al.), ``per_image.safetensors`` (which test images each
final metric got right), ``activation.safetensors`` and ``train.log``. ``until_plateau`` stops a run
once robust validation accuracy plateaus (``convergence.py``).

Exact resume: each epoch starts by seeding every RNG from ``(seed, epoch)`` and shuffles with a
generator seeded the same way, and the checkpoint holds model, optimizer, scheduler, AMP scaler and
RNG states; a run killed after epoch k and started again on the same ``out_dir`` ends bit-identical
(on CPU) to one that was never interrupted. Data subsets are drawn with a fixed seed, so every
``seed`` of a study sees the same images and seeds measure training noise only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..activation_set import ActivationSet, save_activation_set
from ..atomic import write_json
from ..backbones import create_backbone
from ..inject import InjectionReport, extract, inject, param_groups
from ..threat_model import threat_record
from ..workarounds import avoid_onednn_1x1_bug
from .allocator import retain_freed_memory
from .attacks import create_attack
from .autoattack import attack_provenance
from .checkpoint import (
    RunLog,
    derive_seed,
    load_checkpoint,
    read_json,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .config import RESUME_MAY_CHANGE, TrainConfig
from .convergence import convergence_record, plateau_epoch, robust_curve
from .data import TensorData, create_dataset, dataset_info, holdout_split
from .evaluation import evaluate
from .per_image import PER_IMAGE_FILE, PerImage, save_per_image
from .recipes import Recipe, create_recipe

__all__ = [
    "TrainConfig",
    "TrainingDivergedError",
    "train",
    "load_run",
    "build_model",
    "resolve_config",
    "lr_factor",
    "load_data",
    "load_test_data",
]

_DATA_SEED = 0


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a ValueError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s): "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_weights(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(state)``, or a ValueError saying the checkpoint belongs to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(
            f"{path}: its weights do not fit the model of this run's config ({detail[:300]}); the file "
            "belongs to another run. Use the matching run directory, or another --out to start afresh"
        ) from None


def resolve_config(config: TrainConfig, activation_set: ActivationSet | None = None) -> TrainConfig:
    """The config as run: the dataset's size, channels and threat model (``eps``/``alpha``/``steps`` left
    ``None``) filled in, the activation set's name/options."""
    info = dataset_info(config.dataset)
    config = config.with_threat_model()
    changes: dict[str, Any] = {
        "input_size": config.input_size or info.image_size,
        "in_chans": config.in_chans or info.in_chans,
    }
    if activation_set is not None:
        changes.update(activation=activation_set.activation, activation_config=dict(activation_set.config),
                       transfer_source=config.transfer_source or activation_set.source or "activation set")
    return replace(config, **changes)


def build_model(
    config: TrainConfig, num_classes: int, activation_set: ActivationSet | None = None
) -> tuple[nn.Module, InjectionReport]:
    """The backbone of a resolved config with its activation injected at every site (on the CPU)."""
    model = create_backbone(config.arch, num_classes=num_classes, in_chans=config.in_chans,
                            input_size=config.input_size, width=config.width, **config.model_kwargs)
    if activation_set is not None:
        report = inject(model, activation_set, policy=config.policy, freeze=config.freeze)
    else:
        report = inject(model, config.activation, **config.activation_config)
    avoid_onednn_1x1_bug(model)  # narrow ResNet shortcuts crash oneDNN's weight gradient: docs/known-issues.md
    return model, report


def lr_factor(config: TrainConfig, epoch: int, history: Sequence[dict[str, Any]] = ()) -> float:
    """Multiplier of ``config.lr`` during ``epoch`` (0-based). A step milestone m falls at epoch
    ⌊m·epochs⌋ (0.5/0.75 of 200 → 100/150, Rice et al.; of 3 → 1/2), and never before epoch 1: the
    first epoch always trains at the full rate. The ``plateau`` schedule is ``gamma`` from the epoch
    after robust validation accuracy first plateaued in ``history`` (the epochs before ``epoch``) on."""
    if config.schedule == "step":
        return config.gamma ** sum(epoch >= max(1, int(m * config.epochs + 1e-9)) for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.schedule == "plateau":
        return config.gamma if _plateau_decay_epoch(config, history[:epoch]) is not None else 1.0
    return 1.0


def _plateau_decay_epoch(config: TrainConfig, history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch after which the ``plateau`` schedule decayed the lr (its first plateau), or None."""
    values = robust_curve(history)
    return None if values is None else plateau_epoch(values, config.patience, config.plateau_tol)


def _plateau_reached(config: TrainConfig, history: Sequence[dict[str, Any]]) -> bool:
    """Whether an ``until_plateau`` run stops after ``history``: robust validation accuracy has
    plateaued — with the ``plateau`` schedule, a second time, ``patience + 1`` epochs after the decay."""
    values = robust_curve(history)
    if not config.until_plateau or values is None:
        return False
    decayed = plateau_epoch(values, config.patience, config.plateau_tol)
    if config.schedule != "plateau" or decayed is None:
        return decayed is not None
    return plateau_epoch(values, config.patience, config.plateau_tol, start=decayed) is not None


def load_data(
    config: TrainConfig, device: torch.device | str = "cpu"
) -> tuple[TensorData, TensorData | None, TensorData]:
    """Train, validation and test data. Validation is ``val_subset`` images (at most a tenth of the train
    split) held out of the train split; ``None`` when ``val_subset`` is 0 or unset.

    Raises the data layer's ``DatasetNotFoundError`` before anything else is built.
    """
    common = {"data_dir": config.data_dir, "download": config.download, "input_size": config.input_size,
              "in_chans": config.in_chans}
    full = create_dataset(config.dataset, "train", **common)
    val = None
    n_val = min(config.val_subset or 0, len(full) // 10)
    if n_val:
        train_idx, val_idx = holdout_split(full.labels, n_val, _DATA_SEED)
        val = TensorData(full.images[val_idx], full.labels[val_idx], full.info)
        full = TensorData(full.images[train_idx], full.labels[train_idx], full.info)
    if config.train_subset is not None and config.train_subset < len(full):
        full = full.subset(config.train_subset, seed=_DATA_SEED)
    return full.to(device), (val.to(device) if val is not None else None), load_test_data(config, device)


def load_test_data(config: TrainConfig, device: torch.device | str = "cpu") -> TensorData:
    """The test split, cut to ``config.test_subset`` (stratified, fixed seed) when that is smaller."""
    test = create_dataset(config.dataset, "test", data_dir=config.data_dir, download=config.download,
                          input_size=config.input_size, in_chans=config.in_chans)
    if config.test_subset is not None and config.test_subset < len(test):
        test = test.subset(config.test_subset, seed=_DATA_SEED)
    return test.to(device)


def _autocast(config: TrainConfig, device: torch.device) -> tuple[Any, float, torch.amp.GradScaler | None]:
    """Autocast factory, attack loss scale and grad scaler: AMP on CUDA only, fp16 with a GradScaler."""
    if device.type != "cuda" or config.amp == "off":
        return contextlib.nullcontext, 1.0, None
    dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), (1024.0 if scaler else 1.0), scaler


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def _validate(model: nn.Module, data: TensorData, config: TrainConfig) -> tuple[float, float]:
    """Clean and PGD accuracy (percent) with the training attack's ε, step and steps, model in eval mode."""
    attack = create_attack("pgd", eps=config.eps, alpha=config.alpha, steps=config.steps)
    clean = robust = 0
    was_training = model.training
    model.eval()
    for x, y in data.batches(config.eval_batch_size):
        x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
        clean += _accuracy(model, x, y)
        robust += _accuracy(model, attack(model, x, y), y)
    model.train(was_training)
    return 100.0 * clean / len(data), 100.0 * robust / len(data)


def _fresh_state(
    config: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(model, config.weight_decay, config.activation_weight_decay)
    if config.optimizer == "adamw":  # vision transformers barely move under SGD in a short run
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(config, epoch))
    return optimizer, scheduler


def _check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Keys that differ; an error if any of them may not change on resume."""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if fixed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in fixed)
        raise ValueError(
            f"{path} belongs to a run with a different config ({detail}). Use another out_dir, or delete "
            f"the checkpoint to start afresh; only {sorted(RESUME_MAY_CHANGE)} may change on resume."
        )
    return changed


@dataclass
class _Run:
    """What a run carries from epoch to epoch: the model, its optimiser state and the progress so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    recipe: Recipe
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_clean": None, "val_robust": None})
    epochs_done: int = 0


def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    activation_set: ActivationSet | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` and return its final metrics (percent; see ``metrics.json``).

    With ``activation_set``, the backbone gets it injected with ``config.policy`` and frozen if
    ``config.freeze``; otherwise a fresh ``config.activation`` everywhere. A ``checkpoint.pt`` already
    in ``out_dir`` is resumed from (a finished run just returns its metrics).
    """
    # 1. The config as run, the device and the data (a missing dataset fails here, before anything is built).
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.validate()
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"{out_dir} is an existing file, not a run directory; give --out a directory path")
    device = resolve_device(config.device)
    config = resolve_config(config, activation_set)
    train_data, val_data, test_data = load_data(config, device)

    # 2. An earlier run in out_dir: resume it, or return its metrics if it is finished.
    out = Path(out_dir)
    ckpt, changed = _previous_run(out / "checkpoint.pt", config)
    finished = ckpt and (ckpt["epoch"] == config.epochs or _plateau_reached(config, ckpt["history"]))
    if finished and not changed and (out / "metrics.json").exists():
        return read_json(out / "metrics.json")

    # 3. Model (activation injected), optimiser, schedule and recipe; the checkpoint's state on top.
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log", echo=progress)
    run, report = _build_run(config, train_data.info.num_classes, activation_set, device)
    if ckpt:
        _restore(run, ckpt, config, out / "checkpoint.pt")
        note = f" (changed: {', '.join(changed)})" if changed else ""
        log(f"resumed from {out / 'checkpoint.pt'} after epoch {run.epochs_done}{note}")
    else:
        log(f"new run in {out}")
        log(f"config {config.to_dict()}\n{report}", echo=False)
        write_json(out / "config.json", config.to_dict())  # after a resume: with the next checkpoint
    log(f"device {device}, amp {config.amp if device.type == 'cuda' else 'off (cpu)'}, "
        f"{len(train_data)} train / {len(val_data) if val_data else 0} val / {len(test_data)} test images")

    # 4. Epochs: train, step the schedule, validate, checkpoint. Each epoch is seeded from (seed, epoch).
    #    An until_plateau run stops once robust validation accuracy has plateaued (convergence.py).
    for epoch in range(run.epochs_done, config.epochs):
        if _plateau_reached(config, run.history):
            log(f"stopped after epoch {epoch} of at most {config.epochs}: robust validation accuracy plateaued")
            break
        seed_everything(derive_seed(config.seed, epoch))
        if config.schedule == "plateau":  # the decay depends on the history, not on the epoch alone
            for group in run.optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config, epoch, run.history)
        started, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
        try:
            loss, acc = _train_epoch(run, train_data, config, epoch, progress)
        except TrainingDivergedError as exc:
            raise _stopped(exc, run, config, out, log) from None
        run.scheduler.step()
        val_clean, val_robust = _validate(run.model, val_data, config) if val_data else (None, None)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, "train_acc": acc, "val_clean": val_clean,
               "val_robust": val_robust, "seconds": time.perf_counter() - started}
        _end_epoch(run, row, config, out)
        log(_epoch_line(row))

    # 5. Final test evaluation (last and best-validation model) and the run directory's results.
    metrics, correct = _final_metrics(run, out / "best.pt", config, test_data, progress)
    _write_results(out, run.model, config, metrics, correct)
    log(f"done: {metrics}")
    return metrics


def _previous_run(path: Path, config: TrainConfig) -> tuple[dict[str, Any] | None, list[str]]:
    """The checkpoint of an earlier run of ``config`` at ``path`` (``None`` if there is none) and the
    config keys that changed since; an error if the run cannot be continued with ``config``."""
    if not path.exists():
        return None, []
    ckpt = load_checkpoint(path)
    missing = [k for k in ("epoch", "config", "optimizer", "scheduler", "rng", "history", "best") if k not in ckpt]
    if missing or not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("epoch"), int):
        raise ValueError(f"{path}: not a resumable checkpoint (lacks {missing or ['a valid epoch/config']}); "
                         "delete it to start the run afresh, or use another --out")
    changed = _check_resume(ckpt["config"], config.to_dict(), path)
    if ckpt["epoch"] > config.epochs:
        raise ValueError(f"{path} has {ckpt['epoch']} epochs done; config.epochs={config.epochs} is fewer")
    return ckpt, changed


def _build_run(
    config: TrainConfig, num_classes: int, activation_set: ActivationSet | None, device: torch.device
) -> tuple[_Run, InjectionReport]:
    """A fresh run on ``device``: model seeded from ``config.seed``, SGD, lr schedule, AMP scaler, recipe."""
    seed_everything(config.seed)
    model, report = build_model(config, num_classes, activation_set)
    # channels-last is faster on CPU (oneDNN) as well as on CUDA: docs/performance.md
    model.to(device=device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    retain_freed_memory()  # glibc's page faults cost a Sparta AT step 6-7% on the CPU: allocator.py
    if config.compile:
        model.compile()  # in place: same state dict and hooks; the first steps compile (docs/performance.md)
    optimizer, scheduler = _fresh_state(config, model)
    autocast, loss_scale, scaler = _autocast(config, device)
    recipe = create_recipe(config.recipe, eps=config.eps, alpha=config.alpha, steps=config.steps,
                           trades_beta=config.trades_beta, fgsm_step=config.fgsm_step, autocast=autocast,
                           loss_scale=loss_scale)
    return _Run(model, optimizer, scheduler, scaler, recipe), report


def _restore(run: _Run, ckpt: dict[str, Any], config: TrainConfig, ckpt_path: Path) -> None:
    """Put a checkpoint's model, optimiser, schedule, scaler and RNG states and progress into ``run``
    (``lr`` and ``epochs`` may have changed since: the schedule follows the current config)."""
    load_weights(run.model, ckpt["model"], ckpt_path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scheduler.base_lrs = [config.lr] * len(run.optimizer.param_groups)
    for group in run.optimizer.param_groups:
        group["initial_lr"] = config.lr
        group["lr"] = config.lr * lr_factor(config, ckpt["epoch"], ckpt["history"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.history, run.best, run.epochs_done = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"])


def _train_epoch(
    run: _Run, data: TensorData, config: TrainConfig, epoch: int, progress: bool
) -> tuple[float, float]:
    """One epoch; returns mean loss and accuracy (percent) on the inputs the loss was computed on."""
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    model.train()
    generator = torch.Generator().manual_seed(derive_seed(config.seed, epoch, 1))
    n_batches = math.ceil(len(data) / config.batch_size)
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for step, (x, y) in enumerate(data.batches(config.batch_size, shuffle=True, generator=generator)):
            if len(y) < 2:  # BatchNorm cannot normalise a batch of one in train mode
                continue
            x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
            loss, logits = run.recipe(model, x, y)
            value = float(loss.detach())
            where = f"at epoch {epoch + 1}, step {step + 1} ({_lr_and_amp(optimizer, config, model)})"
            if not math.isfinite(value):
                raise TrainingDivergedError(f"training loss became {value} {where}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            bad = _first_non_finite((n, p) for n, p in model.named_parameters() if p.requires_grad)
            if bad is not None:
                raise TrainingDivergedError(f"parameter {bad!r} became non-finite (NaN or inf) in the update {where}")
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    finally:
        bar.close()
    bad = _first_non_finite(model.named_buffers())  # BatchNorm statistics, before anything is saved
    if bad is not None:
        raise TrainingDivergedError(
            f"buffer {bad!r} became non-finite (NaN or inf) during epoch {epoch + 1} "
            f"({_lr_and_amp(optimizer, config, model)})"
        )
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def _first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or ``None`` (one sync in all)."""
    items = [(n, t) for n, t in named if t.is_floating_point()]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])
    return None if bool(finite.all()) else items[int((~finite).nonzero()[0, 0])][0]


def _amp_ran(config: TrainConfig, model: nn.Module) -> bool:
    """Whether mixed precision was on: asked for, and on CUDA (on the CPU ``amp`` is ignored)."""
    param = next(model.parameters(), None)
    return config.amp != "off" and param is not None and param.device.type == "cuda"


def _lr_and_amp(optimizer: torch.optim.Optimizer, config: TrainConfig, model: nn.Module) -> str:
    lr = f"lr {optimizer.param_groups[0]['lr']:.4g}"
    return f"{lr}, amp {config.amp}" if _amp_ran(config, model) else lr


def _stopped(
    exc: TrainingDivergedError, run: _Run, config: TrainConfig, out: Path, log: RunLog
) -> TrainingDivergedError:
    """The error a diverged run stops with: what happened, which checkpoint is kept, what to try."""
    kept = (f"the last good checkpoint (epoch {run.epochs_done}) is kept in {out / 'checkpoint.pt'}"
            if (out / "checkpoint.pt").exists() else "no epoch had finished, so there is no checkpoint")
    amp = " or amp 'off'" if _amp_ran(config, run.model) else ""
    msg = f"{exc}; {kept}. Try a lower lr (e.g. --lr {config.lr / 10:g}){amp}, then run again."
    log(f"stopped: {msg}")
    return TrainingDivergedError(msg)


def _end_epoch(run: _Run, row: dict[str, Any], config: TrainConfig, out: Path) -> None:
    """Record a finished epoch: ``best.pt`` when robust validation accuracy improved (Rice et al.),
    then ``checkpoint.pt`` (everything exact resume needs) and ``history.json``."""
    run.history.append(row)
    best = run.best["val_robust"]
    if row["val_robust"] is None or best is None or row["val_robust"] > best:
        run.best = {"epoch": row["epoch"], "val_clean": row["val_clean"], "val_robust": row["val_robust"]}
        save_checkpoint(out / "best.pt", {"epoch": row["epoch"], "model": run.model.state_dict(), **run.best})
    save_checkpoint(out / "checkpoint.pt", {
        "epoch": row["epoch"], "config": config.to_dict(), "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {}, "rng": rng_state(),
        "history": run.history, "best": run.best,
    })
    # config.json describes checkpoint.pt; the results of a finished run this one extends describe a
    # model that is gone now, so they go until this run writes its own
    write_json(out / "config.json", config.to_dict())
    for stale in ("metrics.json", "activation.safetensors"):
        (out / stale).unlink(missing_ok=True)
    run.epochs_done = row["epoch"]
    write_json(out / "history.json", run.history)


def _write_results(
    out: Path, model: nn.Module, config: TrainConfig, metrics: dict[str, Any], correct: PerImage
) -> None:
    """``metrics.json``, which test images the last model got right under each metric
    (``per_image.safetensors``, for the per-image paired tests) and the trained activation with the
    run's description (``activation.safetensors``)."""
    write_json(out / "config.json", config.to_dict())
    save_per_image(out / PER_IMAGE_FILE, correct)
    write_json(out / "metrics.json", metrics)
    meta = {"arch": config.arch, "dataset": config.dataset, "recipe": config.recipe,
            "input_size": config.input_size, "width": config.width, "seed": config.seed, "metrics": metrics,
            "train_config": config.to_dict()}
    save_activation_set(extract(model, meta=meta), out / "activation.safetensors")


def _epoch_line(row: dict[str, Any]) -> str:
    val = "" if row["val_robust"] is None else \
        f"  val clean {row['val_clean']:.2f}%  val robust {row['val_robust']:.2f}%"
    return (f"epoch {row['epoch']}: lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.2f}%{val}  {row['seconds']:.1f}s")


def _final_metrics(
    run: _Run, best_path: Path, config: TrainConfig, test_data: TensorData, progress: bool
) -> tuple[dict[str, Any], PerImage]:
    """Test metrics of the last model at top level, the best-validation model's under ``best``, whether
    robust validation accuracy had plateaued under ``convergence``; and the last model's per-image
    correctness. ``epoch`` is the epochs trained (fewer than ``config.epochs`` if it stopped at a plateau)."""
    model = run.model
    eps = config.eval_radius()
    attacks = ["clean", *[a for a in config.eval_attacks if a != "clean"]]

    def test() -> tuple[dict[str, float], PerImage]:
        seed_everything(derive_seed(config.seed, run.epochs_done, 2))
        return evaluate(model, test_data, attacks, eps=eps, batch_size=config.eval_batch_size,
                        progress=progress, return_per_image=True)

    last, correct = test()
    best_metrics = last
    if run.best["epoch"] != run.epochs_done and best_path.exists():
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(load_checkpoint(best_path)["model"])
        best_metrics, _ = test()
        model.load_state_dict(current)
    return {
        **last,
        "epoch": run.epochs_done,
        "convergence": convergence_record(run.history, config.patience, config.plateau_tol),
        "eps": eps,
        "threat_model": threat_record(eps=eps, train_eps=config.eps, alpha=config.alpha, steps=config.steps,
                                      attacks=attacks),
        **attack_provenance(last),  # "autoattack_version" when an official AutoAttack number is here
        "n_test": len(test_data),
        "train_seconds": sum(r["seconds"] for r in run.history),
        "best": {**best_metrics, **run.best},
    }, correct


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu", which: str = "last"
) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory (``which``: ``last`` or ``best``) in eval mode, and its config."""
    run = Path(run_dir)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json); create one with `sparta train`")
    try:
        config = TrainConfig.from_dict(read_json(run / "config.json"))
    except ValueError as exc:
        raise ValueError(f"{run / 'config.json'}: {exc}") from None
    path = run / ("checkpoint.pt" if which == "last" else "best.pt")
    state = load_checkpoint(path)
    model, _ = build_model(config, dataset_info(config.dataset).num_classes, None)
    load_weights(model, state["model"], path)
    return model.to(device).eval(), config
