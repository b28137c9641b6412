"""``sparta zoo list|info|export|import|remove``: the zoo from the command line.

``sparta train --save-to-zoo NAME`` reaches ``sparta zoo import RUN/activation.safetensors --name NAME``
through ``transfer.cli.run_command``; the import prints the entry reference (``NAME@VERSION``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from transfer.cli import parse_eps, print_json

from .errors import ZooError
from .readme import command_lines
from .registry import Registry
from .threat import describe_threat, headline_metric, ordered_metric_names, threat_model_of

__all__ = ["register"]

# Numbers of a run's metrics.json that are facts about the run, not accuracies (info prints them in words).
_RUN_FACTS = ("epoch", "eps", "n_test", "train_seconds")
_INDENT = " " * 15  # where `info` prints its values
_COMMAND_WIDTH = 100 - len(_INDENT)  # a recorded command's lines: with the indent, 100 columns


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=None, help="registry root (default: $SPARTA_ZOO, else the user cache)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sparta zoo`` and its actions to the ``sparta`` parser."""
    zoo = subparsers.add_parser("zoo", help="the registry of trained activations (list, info, export, import, remove)")
    zoo.set_defaults(func=lambda args: _usage(zoo))
    actions = zoo.add_subparsers(dest="zoo_action", metavar="ACTION")
    common = _common()

    p = actions.add_parser("list", parents=[common], help="list stored entries")
    for key in ("activation", "variant", "arch", "dataset"):
        p.add_argument(f"--{key}", default=None, help=f"only entries with this {key}")
    p.add_argument(
        "--eps",
        type=parse_eps,
        default=None,
        help="only entries evaluated at this radius (threat model), e.g. 8/255 or 0.1",
    )
    p.add_argument("--norm", default=None, help="only entries of this threat-model norm: Linf or L2")
    p.add_argument("--latest", action="store_true", help="only the newest version of each name")
    p.set_defaults(func=_guarded(_cmd_list))

    p = actions.add_parser("info", parents=[common], help="show the card of one entry")
    p.add_argument("ref", metavar="NAME[@VERSION]", help="entry name, optionally with @VERSION (default: latest)")
    p.set_defaults(func=_guarded(_cmd_info))

    p = actions.add_parser(
        "export", parents=[common], help="write one entry as a self-describing .safetensors, or a Hugging Face folder"
    )
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.add_argument(
        "path",
        help="output file, or a directory to write NAME-vVERSION.safetensors into; "
        "with --format hf, the folder to write (activation.safetensors, README.md, config.json)",
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "hf"),
        default="safetensors",
        help="hf: a folder ready for `hf upload` / huggingface_hub.upload_folder (docs/zoo.md)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file (hf: the folder's files)")
    p.set_defaults(func=_guarded(_cmd_export))

    p = actions.add_parser(
        "import",
        parents=[common],
        help="store an exported entry or an activation-set file (a run's activation)",
    )
    p.add_argument(
        "path",
        help="a .safetensors file (exported entry or activation set), a run directory, or a "
        "folder written by `sparta zoo export --format hf` (e.g. fetched with `hf download`)",
    )
    p.add_argument("--name", default=None, help="entry name (default: the card's, else DATASET-ARCH-ACTIVATION)")
    p.set_defaults(func=_guarded(_cmd_import))

    p = actions.add_parser("remove", parents=[common], help="delete one version, or every version of a name")
    p.add_argument("ref", metavar="NAME[@VERSION]", help="a bare NAME removes all its versions")
    p.set_defaults(func=_guarded(_cmd_remove))


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """OS errors (an unwritable root, a full disk) as one clean line, like every other zoo error."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ZooError(f"{exc}; check the registry root (--root or $SPARTA_ZOO) is writable") from exc

    return run


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _fmt_metric(metrics: dict[str, Any] | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def _fmt_robust(row: dict[str, Any]) -> str:
    """The headline robust accuracy with the attack it was measured under, e.g. ``41.0 (pgd20)``."""
    metric = headline_metric(row["metrics"], row["threat_model"])
    return "-" if metric is None else f"{_fmt_metric(row['metrics'], metric)} ({metric})"


def _cmd_list(args: argparse.Namespace) -> int:
    def broken(ref: Any, exc: Exception) -> None:
        print(f"sparta zoo list: skipping {ref}: {exc}", file=sys.stderr)

    rows = Registry(args.root).list(
        activation=args.activation,
        variant=args.variant,
        arch=args.arch,
        dataset=args.dataset,
        eps=args.eps,
        norm=args.norm,
        latest_only=args.latest,
        on_broken=broken,
    )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        filtered = any(getattr(args, k) for k in ("activation", "variant", "arch", "dataset", "eps", "norm"))
        print(f"no zoo entries in {Registry(args.root).root}" + (" matching the filters" if filtered else ""))
        return 0
    header = ("entry", "activation", "variant", "arch", "dataset", "threat model", "clean", "robust", "origin")
    table = [
        (r["ref"], r["activation"], r["variant"] or "-", r["arch"] or "-", r["dataset"] or "-",
         describe_threat(r["threat_model"]), _fmt_metric(r["metrics"], "clean"), _fmt_robust(r), r["origin"])
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    registry = Registry(args.root)
    ref = registry.resolve(args.ref)
    card = registry.info(ref.name, ref.version)
    if args.json:
        print_json({**card, "origin": ref.origin, "path": str(ref.path)})
        return 0
    print(f"{ref}  ({ref.origin}: {ref.path})")
    config = ", ".join(f"{k}={v}" for k, v in card["config"].items())
    print(f"  activation   {card['activation']} ({config})")
    for key in ("arch", "dataset", "input_size", "width", "seed", "recipe", "derived_from"):
        if card.get(key) is not None:
            print(f"  {key:<12} {card[key]}")
    if card.get("command"):  # the argv that produced the entry, as lines to paste into a shell
        first, *rest = command_lines(card["command"], width=_COMMAND_WIDTH)
        print(f"  command      {first}")
        for line in rest:
            print(_INDENT + line)
    print(f"  threat model {describe_threat(threat_model_of(card))}")
    for line in _metrics_table(card.get("metrics") or {}):
        print(line)
    n_params, n_tensors = card["num_parameters"], card["num_tensors"]
    print(f"  sites        {card['num_sites']} ({n_params} parameters in {n_tensors} tensors)")
    print(f"  created      {card['created']} (sparta-transfer {card['toolkit_version']})")
    print(f"  sha256       {card['sha256']}")
    if card.get("description"):
        print(f"  description  {card['description']}")
    return 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    """The card's accuracies as a table (metric, final, best; one decimal), rows in
    :func:`zoo.threat.ordered_metric_names` order, under one line of what they were measured on. A best
    column that would repeat the final one (a run without validation: its best checkpoint is its final
    model) is left out."""
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    if all(metrics.get(k) == v for k, v in best.items() if _is_number(v) and k not in _RUN_FACTS):
        best = {}
    columns = [("final", metrics), ("best", best)] if best else [("final", metrics)]
    names = ordered_metric_names(
        k for _, source in columns for k, v in source.items() if _is_number(v) and k not in _RUN_FACTS
    )
    if not names:
        return []
    facts = [f"{metrics['n_test']} test images" if _is_number(metrics.get("n_test")) else ""]
    if _is_number(best.get("epoch")):
        of = f" of {metrics['epoch']}" if _is_number(metrics.get("epoch")) else ""
        facts.append(f"best = epoch {best['epoch']}{of}")
    elif _is_number(metrics.get("epoch")):
        facts.append(f"after {metrics['epoch']} epochs")
    detail = "; ".join(f for f in facts if f)
    rows = [("metric", *(c for c, _ in columns))]
    rows += [(n, *(f"{s[n]:.1f}" if _is_number(s.get(n)) else "-" for _, s in columns)) for n in names]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = []
    for name, *values in rows:  # names left-aligned, numbers right-aligned
        cells = [name.ljust(widths[0]), *(v.rjust(w) for v, w in zip(values, widths[1:], strict=True))]
        table.append(_INDENT + "  ".join(cells))
    return ["  metrics      accuracy in %" + (f" ({detail})" if detail else ""), *table]


def _cmd_export(args: argparse.Namespace) -> int:
    registry = Registry(args.root)
    ref = registry.resolve(args.ref)
    out = registry.export(ref.name, args.path, ref.version, overwrite=args.force, format=args.format)
    if args.json:
        print_json({"ref": str(ref), "path": str(out)})
    else:
        print(out)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    registry = Registry(args.root)
    ref = registry.import_file(args.path, name=args.name)
    if args.json:
        print_json({"ref": str(ref), "name": ref.name, "version": ref.version, "path": str(ref.path)})
    else:
        print(ref)
        print(f"stored in {ref.path}", file=sys.stderr)
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    removed = Registry(args.root).remove(args.ref)
    if args.json:
        print_json({"removed": [str(r) for r in removed]})
    else:
        print("removed " + ", ".join(str(r) for r in removed))
    return 0
