"""Adversarial training runs: ``train(config, out_dir)`` and ``load_run`` (``TrainConfig`` is in ``recipes``).

``train(config, out_dir)`` writes a run directory (``docs/architecture.md``): ``config.json`` (the
resolved config), ``history.json``, ``metrics.json``, ``checkpoint.pt`` (last epoch), ``best.pt``
(best robust validation accuracy, Rice et al.), ``activation.safetensors`` and ``train.log``.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..activation_set import ActivationSet, save_activation_set
from ..backbones import create_backbone
from ..inject import InjectionReport, extract, inject, param_groups
from .attacks import create_attack
from .checkpoint import (
    RunLog,
    derive_seed,
    load_checkpoint,
    read_json,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
)
from .config import RESUME_MAY_CHANGE, TrainConfig
from .data import TensorData, create_dataset, dataset_info, stratified_indices
from .evaluation import evaluate
from .recipes import create_recipe

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
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(spec)


def resolve_config(config: TrainConfig, activation_set: ActivationSet | None = None) -> TrainConfig:
    """The config as run: the dataset's size and channels filled in, the activation set's name/options."""
    info = dataset_info(config.dataset)
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
                            input_size=config.input_size, width=config.width)
    if activation_set is not None:
        report = inject(model, activation_set, policy=config.policy, freeze=config.freeze)
    else:
        report = inject(model, config.activation, **config.activation_config)
    return model, report


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of ``config.lr`` during ``epoch`` (0-based). A step milestone m falls at epoch
    ⌊m·epochs⌋ (0.5/0.75 of 200 → 100/150, Rice et al.; of 3 → 1/2), and never before epoch 1: the
    first epoch always trains at the full rate."""
    if config.schedule == "step":
        return config.gamma ** sum(epoch >= max(1, int(m * config.epochs + 1e-9)) for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return 1.0


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
        val_idx = stratified_indices(full.labels, n_val, _DATA_SEED)
        keep = torch.ones(len(full), dtype=torch.bool)
        keep[val_idx] = False
        val = TensorData(full.images[val_idx], full.labels[val_idx], full.info)
        full = TensorData(full.images[keep], full.labels[keep], full.info)
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


def _validate(model: nn.Module, data: TensorData, config: TrainConfig, channels_last: bool) -> tuple[float, float]:
    """Clean and PGD accuracy (percent) with the training attack's ε, step and steps, model in eval mode."""
    attack = create_attack("pgd", eps=config.eps, alpha=config.alpha, steps=config.steps)
    clean = robust = 0
    was_training = model.training
    model.eval()
    for x, y in data.batches(config.eval_batch_size):
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        clean += _accuracy(model, x, y)
        robust += _accuracy(model, attack(model, x, y), y)
    model.train(was_training)
    return 100.0 * clean / len(data), 100.0 * robust / len(data)


def _fresh_state(
    config: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(model, config.weight_decay, config.activation_weight_decay)
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


def _train_epoch(
    model: nn.Module, recipe: Any, data: TensorData, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, config: TrainConfig, epoch: int, channels_last: bool, progress: bool,
) -> tuple[float, float]:
    """One epoch; returns mean loss and accuracy (percent) on the inputs the loss was computed on."""
    model.train()
    generator = torch.Generator().manual_seed(derive_seed(config.seed, epoch, 1))
    n_batches = math.ceil(len(data) / config.batch_size)
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for step, (x, y) in enumerate(data.batches(config.batch_size, shuffle=True, generator=generator)):
            if len(y) < 2:  # BatchNorm cannot normalise a batch of one in train mode
                continue
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            loss, logits = recipe(model, x, y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"training loss became {value} at epoch {epoch + 1}, step {step + 1} "
                    f"(lr {optimizer.param_groups[0]['lr']:.4g}, amp {config.amp!r})"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    finally:
        bar.close()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


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
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.validate()
    out = Path(out_dir)
    device = resolve_device(config.device)
    config = resolve_config(config, activation_set)
    train_data, val_data, test_data = load_data(config, device)

    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    changed = _check_resume(ckpt["config"], config.to_dict(), ckpt_path) if ckpt else []
    if ckpt and ckpt["epoch"] > config.epochs:
        raise ValueError(f"{ckpt_path} has {ckpt['epoch']} epochs done; config.epochs={config.epochs} is fewer")
    metrics_path = out / "metrics.json"
    if ckpt and ckpt["epoch"] == config.epochs and not changed and metrics_path.exists():
        return read_json(metrics_path)

    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log", echo=progress)
    seed_everything(config.seed)
    model, report = build_model(config, train_data.info.num_classes, activation_set)
    channels_last = config.channels_last  # faster on CPU (oneDNN) as well as on CUDA: docs/performance.md
    model.to(device=device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer, scheduler = _fresh_state(config, model)
    autocast, loss_scale, scaler = _autocast(config, device)
    recipe = create_recipe(config.recipe, eps=config.eps, alpha=config.alpha, steps=config.steps,
                           trades_beta=config.trades_beta, fgsm_step=config.fgsm_step, autocast=autocast,
                           loss_scale=loss_scale)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_clean": None, "val_robust": None}
    start = 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)  # lr may change on resume
        for group in optimizer.param_groups:
            group["initial_lr"] = config.lr
            group["lr"] = config.lr * lr_factor(config, ckpt["epoch"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        history, best, start = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"])
        note = f" (changed: {', '.join(changed)})" if changed else ""
        log(f"resumed from {ckpt_path} after epoch {start}{note}")
    else:
        log(f"new run in {out}")
        log(f"config {config.to_dict()}\n{report}", echo=False)
    write_json(out / "config.json", config.to_dict())
    log(f"device {device}, amp {config.amp if device.type == 'cuda' else 'off (cpu)'}, "
        f"{len(train_data)} train / {len(val_data) if val_data else 0} val / {len(test_data)} test images")

    for epoch in range(start, config.epochs):
        seed_everything(derive_seed(config.seed, epoch))
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        try:
            loss, acc = _train_epoch(
                model, recipe, train_data, optimizer, scaler, config, epoch, channels_last, progress
            )
        except TrainingDivergedError as exc:
            kept = (f"the last good checkpoint (epoch {start}) is kept in {ckpt_path}" if ckpt_path.exists()
                    else "no epoch had finished, so there is no checkpoint")
            msg = f"{exc}; {kept}. Try a lower lr (e.g. --lr {config.lr / 10:g}) or amp 'off', then run again."
            log(f"stopped: {msg}")
            raise TrainingDivergedError(msg) from None
        scheduler.step()
        val_clean, val_robust = _validate(model, val_data, config, channels_last) if val_data else (None, None)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, "train_acc": acc, "val_clean": val_clean,
               "val_robust": val_robust, "seconds": time.perf_counter() - started}
        history.append(row)
        if val_robust is None or best["val_robust"] is None or val_robust > best["val_robust"]:
            best = {"epoch": epoch + 1, "val_clean": val_clean, "val_robust": val_robust}
            save_checkpoint(best_path, {"epoch": epoch + 1, "model": model.state_dict(), **best})
        save_checkpoint(ckpt_path, {
            "epoch": epoch + 1, "config": config.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng_state(),
            "history": history, "best": best,
        })
        start = epoch + 1
        write_json(out / "history.json", history)
        log(_epoch_line(row))

    metrics = _final_metrics(model, best_path, best, history, config, test_data, progress)
    write_json(metrics_path, metrics)
    meta = {"arch": config.arch, "dataset": config.dataset, "recipe": config.recipe,
            "input_size": config.input_size, "width": config.width, "seed": config.seed, "metrics": metrics,
            "train_config": config.to_dict()}
    save_activation_set(extract(model, meta=meta), out / "activation.safetensors")
    log(f"done: {metrics}")
    return metrics


def _epoch_line(row: dict[str, Any]) -> str:
    val = "" if row["val_robust"] is None else \
        f"  val clean {row['val_clean']:.2f}%  val robust {row['val_robust']:.2f}%"
    return (f"epoch {row['epoch']}: lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.2f}%{val}  {row['seconds']:.1f}s")


def _final_metrics(
    model: nn.Module, best_path: Path, best: dict[str, Any], history: list[dict[str, Any]], config: TrainConfig,
    test_data: TensorData, progress: bool,
) -> dict[str, Any]:
    """Test metrics of the last model at top level, the best-validation model's under ``best``."""
    eps = config.eval_eps if config.eval_eps is not None else config.eps

    attacks = ["clean", *[a for a in config.eval_attacks if a != "clean"]]

    def run() -> dict[str, float]:
        seed_everything(derive_seed(config.seed, config.epochs, 2))
        return evaluate(model, test_data, attacks, eps=eps, batch_size=config.eval_batch_size,
                        progress=progress)

    last = best_metrics = run()
    if best["epoch"] != config.epochs and best_path.exists():
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(load_checkpoint(best_path)["model"])
        best_metrics = run()
        model.load_state_dict(current)
    return {
        **last,
        "epoch": config.epochs,
        "eps": eps,
        "n_test": len(test_data),
        "train_seconds": sum(r["seconds"] for r in history),
        "best": {**best_metrics, **best},
    }


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu", which: str = "last"
) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory (``which``: ``last`` or ``best``) in eval mode, and its config."""
    run = Path(run_dir)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json); create one with `sparta train`")
    config = TrainConfig.from_dict(read_json(run / "config.json"))
    state = load_checkpoint(run / ("checkpoint.pt" if which == "last" else "best.pt"))
    model, _ = build_model(config, dataset_info(config.dataset).num_classes, None)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
