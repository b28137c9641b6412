"""Adversarial training runs: ``train(config, out_dir)`` and ``load_run`` (``TrainConfig`` is in ``config``).

``train(config, out_dir)`` writes a run directory (``docs/architecture.md``; its files: ``run_dir.py``):
``config.json`` (the resolved config), ``history.json``, ``metrics.json``, ``checkpoint.pt`` (last epoch),
``best.pt`` (best robust validation accuracy, Rice et al.), ``per_image.safetensors`` (which test images
each final metric got right), ``activation.safetensors``, ``train.log`` and, when the run started from
``init_from``, ``init_from.json`` (what was loaded and what re-initialised). ``until_plateau`` stops a run
once robust validation accuracy plateaus (``schedule.py``, ``convergence.py``). Every input is checked
(config, data, model, activation) before the directory is created; the directory is locked while a run
uses it.

Exact resume: each epoch starts by seeding every RNG from ``(seed, epoch)`` and shuffles with a
generator seeded the same way, and the checkpoint holds model, optimizer, AMP scaler and RNG states; a
run killed after epoch k and started again on the same ``out_dir`` ends bit-identical (on CPU) to one
that was never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..activation_set import ActivationSet
from ..atomic import read_json
from ..init_weights import InitReport, load_init_weights
from ..inject import InjectionReport
from ..model_info import model_device
from ..threat_model import threat_record
from .autoattack import attack_provenance
from .checkpoint import RunCheckpoint, derive_seed, load_checkpoint, rng_state, seed_everything, set_rng_state
from .config import RESUME_MAY_CHANGE, TrainConfig
from .convergence import convergence_record
from .data import TensorData, dataset_info
from .epochs import (
    Precision,
    TrainingDivergedError,
    amp_ran,
    autocast_setup,
    create_optimizer,
    train_epoch,
    training_precision,
    validate,
)
from .evaluation import evaluate
from .glibc_malloc import retain_freed_memory
from .per_image import PerImage
from .recipes import Recipe, create_recipe
from .run_dir import (
    INIT_FILE,
    RunLog,
    RunWriteError,
    kept_checkpoint,
    repair_epoch_files,
    run_lock,
    save_epoch,
    write_init_report,
    write_results,
)
from .run_inputs import (
    DatasetChangedError,
    build_model,
    create_model,
    inject_activation,
    load_data,
    load_test_data,
    load_weights,
    resolve_config,
    resolve_device,
)
from .schedule import lr_decay_epoch, lr_factor, plateau_reached, set_learning_rate

__all__ = [
    "TrainConfig",
    "TrainingDivergedError",
    "train",
    "load_run",
    "build_model",
    "DatasetChangedError",
    "resolve_config",
    "lr_factor",
    "load_data",
    "load_test_data",
]


@dataclass
class _Run:
    """What a run carries from epoch to epoch: the model, its optimiser state and the progress so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    recipe: Recipe
    precision: Precision
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_clean": None, "val_robust": None})
    epochs_done: int = 0
    init: InitReport | None = None  # what init_from loaded into a new run's model


def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    activation_set: ActivationSet | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` and return its final metrics (percent; see ``metrics.json``).

    With ``activation_set``, the backbone gets it injected with ``config.policy`` and frozen if
    ``config.freeze``; otherwise a fresh ``config.activation`` everywhere. A ``checkpoint.pt`` already
    in ``out_dir`` is resumed from (a finished run just returns its metrics). Another run using
    ``out_dir`` is a ``RunBusyError``; a file that cannot be written (full disk, file-size limit) a
    ``RunWriteError`` saying what was kept. A new run with ``config.init_from`` starts from that
    checkpoint's weights (``transfer.load_init_weights``; a resumed one from its own checkpoint).

    ``model``: any ``nn.Module`` instead of building ``config.arch`` — trained in place, used as it is (it
    gets [0, 1] pixels; no normalisation is added) after the activation is injected at its sites. The run
    records ``arch = "given:<module>.<class>"``; it resumes only when the same kind of module is passed again
    (``train(config, out_dir, model=...)``), and loads with ``load_run(run_dir, model=...)``; ``sparta eval``
    cannot rebuild it (a factory ``arch = "module:function"`` can).
    """
    # Every input is checked before a new run directory is created: the config, the data (a missing
    # dataset fails here), the model with its activation injected. The directory is locked for the whole
    # run; an existing one at once, so a second run into it fails before loading anything.
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir} is an existing file, not a run directory; give --out a directory path")
    try:
        with contextlib.ExitStack() as locked:
            existed = out.is_dir()
            if existed:
                locked.enter_context(run_lock(out))
            device = resolve_device(config.device)
            config = resolve_config(config, activation_set, model)
            data = load_data(config, device)
            resuming = (out / "checkpoint.pt").exists()
            run, report = _build_run(config, data[0].info.num_classes, activation_set, device, model, resuming)
            if not existed:
                out.mkdir(parents=True, exist_ok=True)
                locked.enter_context(run_lock(out))
            return _run_in(out, run, report, config, data, progress)
    except RunWriteError as exc:
        raise RunWriteError(
            f"{exc}; {kept_checkpoint(out)}. Free disk space (or raise the file-size limit, `ulimit -f`) and run "
            "the same command again: it resumes from there"
        ) from exc


def _run_in(
    out: Path,
    run: _Run,
    report: InjectionReport,
    config: TrainConfig,
    data: tuple[TensorData, TensorData | None, TensorData],
    progress: bool,
) -> dict[str, Any]:
    """The run proper, in the locked directory ``out``: resume or start, the epochs, the final results."""
    train_data, val_data, test_data = data
    ckpt, changed = _previous_run(out / "checkpoint.pt", config)
    finished = ckpt is not None and (ckpt.epoch == config.epochs or plateau_reached(config, ckpt.history))
    if finished and not changed and (out / "metrics.json").exists():
        return read_json(out / "metrics.json")

    log = RunLog(out / "train.log", echo=progress)
    if ckpt is not None:
        _restore(run, ckpt, out)
        note = f" (changed: {', '.join(changed)})" if changed else ""
        log(f"resumed from {out / 'checkpoint.pt'} after epoch {run.epochs_done}{note}")
    else:
        log(f"new run in {out}")
        log(f"config {config.to_dict()}\n{report}", echo=False)
        if run.init is not None:
            write_init_report(out, run.init.to_dict())
            log(str(run.init))
        else:  # a report an earlier run left in this directory describes another model
            (out / INIT_FILE).unlink(missing_ok=True)
    native = f", native bf16: {run.precision.native_bf16}" if run.precision.native_bf16 else ""
    asked = ", cpu_bf16" if config.cpu_bf16 else ""
    log(
        f"device {model_device(run.model)}, training in {run.precision.ran} (amp {config.amp}{asked}{native}), "
        f"{len(train_data)} train / {len(val_data) if val_data else 0} val / {len(test_data)} test images"
    )
    if run.precision.why_fp32:
        log(run.precision.why_fp32)

    # Epochs: lr, train, validate, checkpoint. Each epoch is seeded from (seed, epoch). An until_plateau
    # run stops once robust validation accuracy has plateaued.
    for epoch in range(run.epochs_done, config.epochs):
        if plateau_reached(config, run.history):
            log(f"stopped after epoch {epoch} of at most {config.epochs}: robust validation accuracy plateaued")
            break
        seed_everything(derive_seed(config.seed, epoch))
        lr = set_learning_rate(run.optimizer, config, epoch, run.history)
        started = time.perf_counter()
        try:
            loss, acc = train_epoch(
                run.model, run.optimizer, run.scaler, run.recipe, train_data, config, epoch, lr, progress
            )
        except TrainingDivergedError as exc:
            raise _stopped(exc, run, config, out, log) from None
        val_clean, val_robust = validate(run.model, val_data, config) if val_data else (None, None)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss,
            "train_acc": acc,
            "val_clean": val_clean,
            "val_robust": val_robust,
            "seconds": time.perf_counter() - started,
        }
        _end_epoch(run, row, config, out)
        log(_epoch_line(row))

    # Final test evaluation (last and best-validation model) and the run directory's results.
    metrics, correct = _final_metrics(run, out / "best.pt", config, test_data, progress)
    if config.dataset_fingerprint:
        metrics["dataset_fingerprint"] = config.dataset_fingerprint
    if (out / INIT_FILE).exists():
        metrics["init_from"] = read_json(out / INIT_FILE)
    meta = {
        "arch": config.arch,
        "dataset": config.dataset,
        "recipe": config.recipe,
        "input_size": config.input_size,
        "width": config.width,
        "seed": config.seed,
        "metrics": metrics,
        "train_config": config.to_dict(),
    }
    write_results(out, run.model, config.to_dict(), meta, metrics, correct)
    log(f"done: {metrics}")
    return metrics


def _check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Keys that differ; an error if any of them may not change on resume. A field added to TrainConfig
    after ``saved`` was written counts as its default there."""
    saved = {**TrainConfig().to_dict(), **saved}
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if fixed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in fixed)
        raise ValueError(
            f"{path} belongs to a run with a different config ({detail}). Use another out_dir, or delete "
            f"the checkpoint to start afresh; only {sorted(RESUME_MAY_CHANGE)} may change on resume."
        )
    return changed


def _previous_run(path: Path, config: TrainConfig) -> tuple[RunCheckpoint | None, list[str]]:
    """The checkpoint of an earlier run of ``config`` at ``path`` (``None`` if there is none) and the
    config keys that changed since; an error if the run cannot be continued with ``config``."""
    if not path.exists():
        return None, []
    ckpt = RunCheckpoint.from_state(load_checkpoint(path), path)
    trained_on = ckpt.config.get("dataset_fingerprint", "")
    if trained_on != config.dataset_fingerprint:
        raise DatasetChangedError(
            f"{path} was trained on dataset {config.dataset!r} as it was then, and its files have changed since "
            f"(fingerprint {trained_on[:12]}… then, {config.dataset_fingerprint[:12]}… now): resuming would mix two "
            "datasets. Restore the files to resume, or train into another --out to start afresh on the new data"
        )
    changed = _check_resume(ckpt.config, config.to_dict(), path)
    if ckpt.epoch > config.epochs:
        raise ValueError(f"{path} has {ckpt.epoch} epochs done; config.epochs={config.epochs} is fewer")
    return ckpt, changed


def _build_run(
    config: TrainConfig,
    num_classes: int,
    activation_set: ActivationSet | None,
    device: torch.device,
    given: nn.Module | None,
    resuming: bool,
) -> tuple[_Run, InjectionReport]:
    """A fresh run on ``device``: model seeded from ``config.seed`` (a new run's from ``init_from`` when
    set, before its activation is injected), optimizer, AMP scaler, recipe."""
    seed_everything(config.seed)
    model = create_model(config, num_classes, given)
    init = load_init_weights(model, config.init_from) if config.init_from and not resuming else None
    report = inject_activation(model, config, activation_set)
    # channels-last is faster on CPU (oneDNN) as well as on CUDA: docs/performance.md
    model.to(device=device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    retain_freed_memory()  # glibc's page faults cost a Sparta AT step 6-7% on the CPU: glibc_malloc.py
    if config.compile:
        model.compile()  # in place: same state dict and hooks; the first steps compile (docs/performance.md)
    autocast, loss_scale, scaler = autocast_setup(config, device)  # training only; evaluation stays fp32
    recipe = create_recipe(
        config.recipe,
        eps=config.eps,
        alpha=config.alpha,
        steps=config.steps,
        trades_beta=config.trades_beta,
        fgsm_step=config.fgsm_step,
        attack_bn_mode=config.attack_bn_mode,
        autocast=autocast,
        loss_scale=loss_scale,
    )
    precision = training_precision(config.amp, device, config.cpu_bf16)
    return _Run(model, create_optimizer(config, model), scaler, recipe, precision, init=init), report


def _restore(run: _Run, ckpt: RunCheckpoint, out: Path) -> None:
    """Put a checkpoint's model, optimiser, scaler and RNG states and progress into ``run`` (the lr of
    each epoch follows the current config: ``schedule.set_learning_rate``), and repair the files a
    failed write after it left behind."""
    load_weights(run.model, ckpt.model, out / "checkpoint.pt")
    run.optimizer.load_state_dict(ckpt.optimizer)
    if run.scaler is not None and ckpt.scaler:
        run.scaler.load_state_dict(ckpt.scaler)
    set_rng_state(ckpt.rng)
    run.history, run.best, run.epochs_done = list(ckpt.history), dict(ckpt.best), ckpt.epoch
    repair_epoch_files(out, ckpt)


def _stopped(
    exc: TrainingDivergedError, run: _Run, config: TrainConfig, out: Path, log: RunLog
) -> TrainingDivergedError:
    """The error a diverged run stops with: what happened, which checkpoint is kept, what to try."""
    kept = (
        f"the last good checkpoint (epoch {run.epochs_done}) is kept in {out / 'checkpoint.pt'}"
        if (out / "checkpoint.pt").exists()
        else "no epoch had finished, so there is no checkpoint"
    )
    amp = ""
    if amp_ran(config, run.model):
        amp = " or cpu_bf16 off (drop --cpu-bf16)" if run.precision.device == "cpu" else " or amp 'off'"
    msg = f"{exc}; {kept}. Try a lower lr (e.g. --lr {config.lr / 10:g}){amp}, then run again."
    log(f"stopped: {msg}")
    return TrainingDivergedError(msg)


def _end_epoch(run: _Run, row: dict[str, Any], config: TrainConfig, out: Path) -> None:
    """Record a finished epoch (``run_dir.save_epoch``); ``best.pt`` when robust validation accuracy improved."""
    run.history.append(row)
    best = run.best["val_robust"]
    improved = row["val_robust"] is None or best is None or row["val_robust"] > best
    if improved:
        run.best = {"epoch": row["epoch"], "val_clean": row["val_clean"], "val_robust": row["val_robust"]}
    checkpoint = RunCheckpoint(
        epoch=row["epoch"],
        config=config.to_dict(),
        model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        rng=rng_state(),
        history=run.history,
        best=run.best,
        scaler=run.scaler.state_dict() if run.scaler is not None else {},
    )
    save_epoch(out, checkpoint, improved)
    run.epochs_done = row["epoch"]


def _epoch_line(row: dict[str, Any]) -> str:
    val = (
        "" if row["val_robust"] is None else f"  val clean {row['val_clean']:.2f}%  val robust {row['val_robust']:.2f}%"
    )
    return (
        f"epoch {row['epoch']}: lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.2f}%{val}  {row['seconds']:.1f}s"
    )


def _final_metrics(
    run: _Run, best_path: Path, config: TrainConfig, test_data: TensorData, progress: bool
) -> tuple[dict[str, Any], PerImage]:
    """Test metrics of the last model at top level, the best-validation model's under ``best`` (a copy of
    the model with ``best.pt``'s weights), whether robust validation accuracy had plateaued under
    ``convergence``, and for the ``plateau`` schedule ``lr_decay_epoch``, what training ran in under
    ``precision`` (the evaluation itself is fp32: no autocast); and the last model's per-image correctness.
    ``epoch`` is the epochs trained (fewer than ``config.epochs`` if it stopped at a plateau)."""
    eps = config.eval_radius()
    attacks = ["clean", *[a for a in config.eval_attacks if a != "clean"]]

    def test(model: nn.Module) -> tuple[dict[str, float], PerImage]:
        seed_everything(derive_seed(config.seed, run.epochs_done, 2))
        return evaluate(
            model,
            test_data,
            attacks,
            eps=eps,
            batch_size=config.eval_batch_size,
            progress=progress,
            return_per_image=True,
        )

    last, correct = test(run.model)
    best_metrics = last
    if run.best["epoch"] != run.epochs_done and best_path.exists():
        best_model = copy.deepcopy(run.model)  # a deep copy drops torch.compile's wrapper: it runs eagerly
        load_weights(best_model, load_checkpoint(best_path)["model"], best_path)
        best_metrics, _ = test(best_model)
        del best_model
    decay = {"lr_decay_epoch": lr_decay_epoch(config, run.history)} if config.schedule == "plateau" else {}
    return {
        **last,
        "epoch": run.epochs_done,
        "convergence": convergence_record(run.history, config.patience, config.plateau_tol),
        **decay,
        "eps": eps,
        "threat_model": threat_record(
            eps=eps, train_eps=config.eps, alpha=config.alpha, steps=config.steps, attacks=attacks
        ),
        **attack_provenance(last),  # "autoattack_version" when an official AutoAttack number is here
        "n_test": len(test_data),
        "precision": run.precision.record(),  # what training ran in; evaluation is always fp32
        "train_seconds": sum(r["seconds"] for r in run.history),
        "best": {**best_metrics, **run.best},
    }, correct


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu", which: str = "last", *, model: nn.Module | None = None
) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory (``which``: ``last`` or ``best``) in eval mode, and its config.
    ``model``: the module a run trained as an object (``train(..., model=...)``), which cannot be rebuilt
    from its name; the run's weights are loaded into it."""
    run = Path(run_dir)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json); create one with `sparta train`")
    fields = read_json(run / "config.json")
    try:
        config = TrainConfig.from_dict(fields)
    except ValueError as exc:
        raise ValueError(f"{run / 'config.json'}: {exc}") from None
    path = run / ("checkpoint.pt" if which == "last" else "best.pt")
    state = load_checkpoint(path)
    weights = RunCheckpoint.from_state(state, path).model if which == "last" else state["model"]
    model, _ = build_model(config, dataset_info(config.dataset).num_classes, None, model=model)
    load_weights(model, weights, path)
    return model.to(device).eval(), config
