"""``sparta train`` and ``sparta eval``: the training engine on the command line.

``sparta train`` builds a :class:`~transfer.engine.recipes.TrainConfig` from flags (over an optional
``--config`` JSON file), trains into a run directory and, with ``--save-to-zoo NAME``, hands the
run's ``activation.safetensors`` to ``sparta zoo import`` through the dispatcher (``transfer`` never
imports ``zoo``); ``--activation-from zoo:NAME`` reaches the zoo the same way (``zoo_activation.py``).
``sparta eval RUN_DIR`` rebuilds the trained model and attacks it again. Both take ``--plugin MODULE``
(repeatable): modules imported first, which register datasets and models (``transfer.plugins``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path
from typing import Any

from ..cli import THREADS_HELP, parse_eps, print_json, run_command, threads_argument
from ..plugins import load_plugins
from ..threads import set_threads

__all__ = ["register_train", "register_eval", "default_run_dir", "DIVERGED", "WRITE_FAILED"]

DIVERGED = 1  # `sparta train`: the loss or a weight became NaN/inf; the last good checkpoint is kept
WRITE_FAILED = 3  # `sparta train`: a run-directory file could not be written (disk full, file-size limit)

# flag dest → TrainConfig field, for flags whose value goes into the config unchanged
_CONFIG_FLAGS = {
    "arch": "arch", "dataset": "dataset", "activation": "activation", "recipe": "recipe", "epochs": "epochs",
    "width": "width", "input_size": "input_size", "in_chans": "in_chans", "seed": "seed", "data_dir": "data_dir",
    "lr": "lr", "batch_size": "batch_size", "eps": "eps", "alpha": "alpha", "steps": "steps",
    "trades_beta": "trades_beta", "schedule": "schedule", "train_subset": "train_subset",
    "test_subset": "test_subset", "val_subset": "val_subset", "attacks": "eval_attacks", "amp": "amp",
    "cpu_bf16": "cpu_bf16",
    "device": "device", "policy": "policy", "model_kwargs": "model_kwargs", "optimizer": "optimizer",
    "compile": "compile", "until_plateau": "until_plateau", "patience": "patience", "plateau_tol": "plateau_tol",
    "init_from": "init_from",
}  # fmt: skip
PLUGIN_HELP = (
    "import this module first (a module name on PYTHONPATH, or a .py file); it registers datasets "
    "and models (docs/own-data.md). Repeatable"
)


def _json_object(text: str) -> dict[str, Any]:
    from ..atomic import parse_json

    try:
        value = parse_json(text, what=repr(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"kernel_size\": 5}}', got {text!r}")
    return value


def _slug(name: str) -> str:
    """A name as one path component: ``folder:/data/pets`` → ``folder-pets``, ``mymodels:small_cnn`` →
    ``mymodels-small_cnn``."""
    scheme, colon, rest = name.partition(":")
    if colon and scheme in ("folder", "npz"):
        name = f"{scheme}-{Path(rest.rstrip('/')).stem or 'data'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def default_run_dir(config: Any) -> Path:
    """``runs/<arch>-<dataset>-<activation>[-<variant>]-<recipe>-s<seed>`` (a path or factory name shortened
    to one path component)."""
    variant = config.activation_config.get("variant")
    act = f"{config.activation}-{variant}" if variant else config.activation
    return Path("runs") / f"{_slug(config.arch)}-{_slug(config.dataset)}-{act}-{config.recipe}-s{config.seed}"


def register_train(subparsers: argparse._SubParsersAction) -> None:
    from .config import SCHEDULES
    from .evaluation import DEFAULT_EVAL_ATTACKS

    p = subparsers.add_parser(
        "train",
        help="train a backbone with an activation (adversarially by default); writes a run directory",
        description="Train ARCH on DATASET with an activation at every site and write a run directory "
        "(config.json, history.json, metrics.json, checkpoint.pt, best.pt, activation.safetensors, train.log). "
        "Unset flags take the paper-scale defaults (PGD AT in the dataset's threat model, e.g. eps 8/255 on "
        "CIFAR-10 and 0.1 on Fashion-MNIST; lr 0.1, batch 128, 200 epochs). "
        "Running again on the same --out resumes from its checkpoint.",
    )
    p.add_argument("--config", type=Path, help="JSON file of TrainConfig fields; the flags below override it")
    p.add_argument("--plugin", action="append", metavar="MODULE", help=PLUGIN_HELP)
    p.add_argument("--arch", help="timm model name (default resnet18), or your factory module.path:function")
    p.add_argument(
        "--dataset",
        help="dataset name, e.g. cifar10, digits, shapes (default cifar10), or your own "
        "folder:PATH (ImageFolder tree) or npz:PATH",
    )
    p.add_argument(
        "--init-from",
        metavar="PATH",
        help="start from this checkpoint (a timm or plain state dict, .safetensors or torch file); a "
        "classifier of another shape is re-initialised, all reported in train.log and metrics.json",
    )
    p.add_argument("--activation", help="activation registry name, e.g. relu, sparta (default relu)")
    p.add_argument("--variant", help="Sparta variant: dw, full or portable")
    p.add_argument("--activation-config", type=_json_object, help="other activation options as JSON")
    p.add_argument("--recipe", help="standard, pgd, trades or fgsm-rs (default pgd)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int, help="tiny-model width (ResNet family)")
    p.add_argument(
        "--model-kwargs",
        type=_json_object,
        help='timm.create_model keywords as JSON, e.g. \'{"depth": 4, "embed_dim": 96}\'',
    )
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd (default) or adamw (vision transformers)")
    p.add_argument("--input-size", type=int, help="image side in pixels (default: the dataset's)")
    p.add_argument("--in-chans", type=int, choices=(1, 3))
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, help="run directory (default runs/<arch>-<dataset>-<activation>-...)")
    p.add_argument("--data-dir", help="dataset root (torchvision layout)")
    p.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--eps",
        type=parse_eps,
        help="L∞ radius in pixels, e.g. 8/255 (default: the dataset's, docs/threat-models.md; "
        "required for folder:/npz: data)",
    )
    p.add_argument(
        "--alpha", type=parse_eps, help="attack step, e.g. 2/255 (default: the dataset's, scaled to --eps and --steps)"
    )
    p.add_argument("--steps", type=int, help="attack steps during training (default: the dataset's)")
    p.add_argument("--trades-beta", type=float)
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule; plateau: lr × gamma once robust validation accuracy plateaus",
    )
    p.add_argument(
        "--until-plateau",
        action="store_true",
        default=None,
        help="stop once robust validation accuracy plateaus (--epochs is the cap; schedule constant "
        "or plateau; docs/evaluation.md, Convergence)",
    )
    p.add_argument("--patience", type=int, help="epochs without a new best that make a plateau (default 3)")
    p.add_argument("--plateau-tol", type=float, help="points a new best must add (default 1)")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--test-subset", type=int)
    p.add_argument("--val-subset", type=int, help="held-out images for robust validation (0: none)")
    p.add_argument(
        "--attacks", help=f"final evaluation specs, comma-separated (default {','.join(DEFAULT_EVAL_ATTACKS)})"
    )
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="mixed precision on CUDA (default bf16)")
    p.add_argument(
        "--cpu-bf16",
        action="store_true",
        default=None,
        help="train under bf16 autocast on a CPU with native bf16 (AVX512_BF16/AMX); fp32 elsewhere",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (the first steps compile; pays on long runs)",
    )
    p.add_argument(
        "--activation-from",
        metavar="FILE|zoo:NAME[@V]",
        help="inject this activation set (.safetensors, or a zoo entry of the run's threat model) "
        "instead of a fresh activation",
    )
    p.add_argument("--policy", help="mapping policy for --activation-from: exact, stage, role, depth, shared")
    p.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        default=None,
        help="let the injected activation set keep training",
    )
    p.add_argument("--save-to-zoo", metavar="NAME", help="then `sparta zoo import` the run's activation as NAME")
    p.add_argument("--threads", type=threads_argument, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=_cmd_train)


def _train_config(args: argparse.Namespace) -> Any:
    from ..atomic import read_json
    from .config import TrainConfig

    fields: dict[str, Any] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config}: no such file")
        fields = read_json(args.config)
        if not isinstance(fields, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object of TrainConfig fields")
    fields.update({key: getattr(args, flag) for flag, key in _CONFIG_FLAGS.items() if getattr(args, flag) is not None})
    if args.download is not None:
        fields["download"] = True
    if args.freeze is not None:
        fields["freeze"] = False
    act_config = fields.get("activation_config") or {}
    if not isinstance(act_config, dict):
        raise ValueError(f"--config {args.config}: activation_config must be a JSON object, got {act_config!r}")
    act_config = {**act_config, **(args.activation_config or {})}
    if args.variant is not None:
        act_config["variant"] = args.variant
    fields["activation_config"] = act_config
    return TrainConfig.from_dict(fields).validate()


def _error(command: str, exc: BaseException) -> int:
    print(f"sparta {command}: error: {exc}", file=sys.stderr)
    return 2


def _cmd_train(args: argparse.Namespace) -> int:
    from .run_dir import RunWriteError
    from .training import TrainingDivergedError, train

    set_threads(args.threads)
    try:
        load_plugins(args.plugin or ())
        config = _train_config(args)
        aset = _activation_set(args.activation_from, config) if args.activation_from else None
        if aset is not None and args.activation and args.activation.lower() != aset.activation:
            raise ValueError(
                f"--activation {args.activation} conflicts with --activation-from {args.activation_from}, "
                f"which holds {aset.activation!r}; drop --activation"
            )
        out = args.out or default_run_dir(config)
        metrics = train(config, out, activation_set=aset, progress=not args.no_progress)
    except TrainingDivergedError as exc:
        print(f"sparta train: {exc}", file=sys.stderr)
        return DIVERGED
    except RunWriteError as exc:
        print(f"sparta train: error: {exc}", file=sys.stderr)
        return WRITE_FAILED
    except (ValueError, FileNotFoundError, KeyError) as exc:  # DatasetNotFoundError is a FileNotFoundError;
        return _error("train", exc)  # RunBusyError (another run holds --out) is a ValueError

    result: dict[str, Any] = {"run_dir": str(out), "metrics": metrics}
    if args.save_to_zoo:
        argv = ["zoo", "import", str(Path(out) / "activation.safetensors"), "--name", args.save_to_zoo]
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            code = run_command(argv)
        result["zoo"] = {"name": args.save_to_zoo, "exit_code": code}
        if code:
            print(f"sparta train: `sparta {' '.join(argv)}` failed (exit {code}); the run is in {out}", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(f"run directory: {out}")
        _print_metrics(metrics)
    return int(result.get("zoo", {}).get("exit_code", 0))


def _activation_set(source: str, config: Any) -> Any:
    """The activation set of ``--activation-from``: a file, or a zoo entry whose threat model is the run's."""
    from ..activation_set import load_activation_set
    from .zoo_activation import activation_set_from_zoo, check_threat_model, is_zoo_ref

    if not is_zoo_ref(source):
        return load_activation_set(Path(source))
    aset, threat = activation_set_from_zoo(source)
    check_threat_model(aset.source, threat, config.eval_radius())
    return aset


def _print_metrics(metrics: dict[str, Any]) -> None:
    from ..threat_model import format_eps

    scores = {k: v for k, v in metrics.items() if isinstance(v, float) and k not in ("eps", "train_seconds")}
    threat = metrics.get("threat_model") or {}
    if threat:
        print(
            f"threat model: L∞ eps {format_eps(threat['eps'])} (trained at {format_eps(threat['train_eps'])}, "
            f"step {format_eps(threat['alpha'])}, {threat['steps']} steps)"
        )
    print("  ".join(f"{k} {v:.2f}%" for k, v in scores.items()))
    best = metrics.get("best")
    if isinstance(best, dict) and best.get("epoch") != metrics.get("epoch"):
        shown = "  ".join(f"{k} {best[k]:.2f}%" for k in scores if isinstance(best.get(k), float))
        print(f"best validation epoch {best['epoch']}: {shown}")
    convergence = metrics.get("convergence") or {}
    if convergence.get("converged") is not None:
        state = "plateaued" if convergence["converged"] else "had NOT plateaued (still climbing)"
        if convergence["converged"] and convergence.get("declined"):
            state = "plateaued past its peak (declined: robust overfitting)"
        print(
            f"robust validation accuracy {state} after {convergence['epochs']} epochs; "
            f"{convergence['epochs_needed']} needed to come within {convergence['tolerance']:g} point(s) of its best"
        )


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained run directory under attacks")
    p.add_argument("run_dir", type=Path, help="a directory written by `sparta train`")
    p.add_argument("--plugin", action="append", metavar="MODULE", help=PLUGIN_HELP)
    p.add_argument(
        "--attacks",
        help="comma-separated specs, e.g. fgsm,pgd20,cw,aa (default: the run's own); clean accuracy is always reported",
    )
    p.add_argument("--n", type=int, help="evaluate a stratified subset of N test images")
    p.add_argument("--eps", type=parse_eps, help="attack radius (default: the run's)")
    p.add_argument("--which", choices=("last", "best"), default="last", help="last epoch or best validation")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-dir", help="dataset root, if it moved since training")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=threads_argument, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sanity = p.add_argument_group(
        "gradient-masking checks (--sanity)",
        "Instead of --attacks: the five standard signs of gradient masking, each PASS/FAIL with its numbers "
        "(docs/evaluation.md). Exit status 0 when all pass, 1 when any fails, 2 on an error.",
    )
    sanity.add_argument("--sanity", action="store_true", help="run the gradient-masking checks")
    sanity.add_argument("--restarts", type=int, default=5, help="random restarts of the strong PGD (default 5)")
    sanity.add_argument("--restart-steps", type=int, default=100, help="steps of the strong PGD (default 100)")
    sanity.add_argument(
        "--square-queries",
        type=int,
        default=5000,
        help="queries of the black-box Square attack (default 5000, AutoAttack's)",
    )
    sanity.add_argument("--noise-samples", type=int, default=10, help="random points of the ε-ball (default 10)")
    sanity.add_argument(
        "--tolerance", type=float, default=1.0, help="percentage points each inequality may miss by (default 1)"
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..attack_names import parse_spec
    from ..model_info import model_device
    from ..threat_model import format_eps, threat_record
    from .autoattack import attack_provenance, is_official_metric
    from .evaluation import evaluate
    from .training import load_run, load_test_data, resolve_device

    set_threads(args.threads)
    try:
        load_plugins(args.plugin or ())
    except ValueError as exc:
        return _error("eval", exc)
    if args.sanity:
        return _cmd_sanity(args)
    try:
        if args.n is not None and args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        asked = [a.strip() for a in (args.attacks or "").split(",") if a.strip()]
        for spec in asked:  # a bad spec fails before the model is loaded
            parse_spec(spec)
        model, config = load_run(args.run_dir, device=resolve_device(args.device), which=args.which)
        if args.data_dir:
            config = replace(config, data_dir=args.data_dir)
        specs = asked or config.eval_attacks
        attacks = ["clean", *[a.strip() for a in specs if a.strip() and a.strip().lower() != "clean"]]
        config = config.with_threat_model()  # a run written before threat models: its own eps stands
        eps = args.eps or config.eval_radius()
        data = load_test_data(config, device=model_device(model))
        metrics = evaluate(
            model, data, attacks, eps=eps, n=args.n, batch_size=args.batch_size, progress=not args.no_progress
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _error("eval", exc)
    n = min(args.n, len(data)) if args.n else len(data)
    threat = threat_record(eps=eps, train_eps=config.eps, alpha=config.alpha, steps=config.steps, attacks=metrics)
    provenance = attack_provenance(metrics)  # the official AutoAttack's version, beside its numbers
    if args.json:
        print_json(
            {
                "run_dir": str(args.run_dir),
                "which": args.which,
                "eps": eps,
                "threat_model": threat,
                "n": n,
                **provenance,
                "metrics": metrics,
            }
        )
    else:
        print(f"{args.run_dir} ({args.which}), L∞ eps {format_eps(eps)}, {n} test images")
        print("  ".join(f"{k} {v:.2f}%" for k, v in metrics.items()))
        if provenance:
            official = ", ".join(m for m in metrics if is_official_metric(m))
            print(f"{official}: official AutoAttack, pyautoattack {provenance['autoattack_version']}")
    return 0


def _cmd_sanity(args: argparse.Namespace) -> int:
    """``sparta eval RUN_DIR --sanity``: the gradient-masking signs of one run (``transfer.engine.sanity``)."""
    from ..threat_model import format_eps
    from .autoattack import autoattack_version
    from .sanity import sanity_check_run

    try:
        if args.attacks:
            raise ValueError("--sanity runs its own attacks; drop --attacks (or run without --sanity)")
        report = sanity_check_run(
            args.run_dir,
            which=args.which,
            n=args.n,
            eps=args.eps,
            device=args.device,
            data_dir=args.data_dir,
            steps=args.restart_steps,
            restarts=args.restarts,
            square_queries=args.square_queries,
            noise_samples=args.noise_samples,
            tolerance=args.tolerance,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _error("eval", exc)
    if args.json:
        print_json(
            {
                "run_dir": str(args.run_dir),
                "which": args.which,
                **report.to_dict(),
                "autoattack_version": autoattack_version(),
            }
        )
    else:
        print(
            f"{args.run_dir} ({args.which}): gradient-masking checks, L∞ eps {format_eps(report.eps)}, "
            f"{report.n} test images, tolerance {report.tolerance:g} percentage point(s)"
        )
        print("\n".join(report.lines()))
        print("all signs pass" if report.passed else f"failed: {', '.join(report.failed)}")
    return 0 if report.passed else 1
