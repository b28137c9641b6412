"""The ``sparta`` command: a dispatcher over sub-command plugins.

Sub-commands are listed under the entry-point group ``sparta.commands`` (see ``pyproject.toml``);
each is ``register(subparsers)``, adding a parser whose ``func(args) -> int`` runs it. ``transfer``
thereby never imports the packages above it; a command that needs another calls
:func:`run_command`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from fractions import Fraction
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "THREADS_HELP",
    "build_parser",
    "main",
    "parse_eps",
    "print_json",
    "register_sites",
    "run_command",
    "threads_argument",
]


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def parse_eps(text: str) -> float:
    """``0.03``, ``8/255`` → float; anything else is an argparse error."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (pixel units; 8/255 = 0.0314), got {text!r}")
    return value


THREADS_HELP = "torch threads for the work (default: one per core this process may use)"


def threads_argument(text: str) -> int:
    """argparse type of ``--threads`` (``sparta train|eval|study run``): a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, e.g. 1 or 2; got {text!r}")
    return value


def register_sites(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sites", help="list the activation call sites of a timm CNN")
    p.add_argument("arch", help="timm model name, e.g. resnet18")
    p.add_argument("--input-size", type=int, default=32, metavar="S", help="image side in pixels (default 32)")
    p.add_argument("--in-chans", type=int, default=3, metavar="C", help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width", type=int, default=None, help="tiny-model width (ResNet family)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_sites)


def _cmd_sites(args: argparse.Namespace) -> int:
    from .backbones import MAX_IN_CHANS, MAX_INPUT_SIZE, create_backbone
    from .layouts import layout_problem
    from .sites import find_sites

    c, size = args.in_chans, args.input_size
    for flag, value, largest in (("--in-chans", c, MAX_IN_CHANS), ("--input-size", size, MAX_INPUT_SIZE)):
        if not 1 <= value <= largest:
            raise ValueError(f"{flag} must be in [1, {largest}], got {value}")
    model = create_backbone(args.arch, num_classes=args.num_classes, in_chans=c, input_size=size, width=args.width)
    sites = find_sites(model, (c, size, size))
    if args.json:
        print_json({"arch": args.arch, "in_chans": c, "input_size": size, "sites": [s.to_dict() for s in sites]})
    else:
        _print_sites(args.arch, (c, size, size), sites)
    problem = layout_problem("sparta", sites, args.arch)
    if problem:  # the table is printed; the refusal is the one error line
        print(f"sparta: error: {problem}", file=sys.stderr)
        return 2
    return 0


def _print_sites(arch: str, input_shape: tuple[int, int, int], sites: list[Any]) -> None:
    """The site table: ``HxW`` is the map or token grid, ``+P`` its prefix tokens, ``L=`` tokens without a grid."""
    from .layouts import ungridded

    width = max(len(s.name) for s in sites) if sites else 4
    print(f"{arch}: {len(sites)} activation sites for input {'x'.join(map(str, input_shape))}")
    print(f"{'#':>3}  {'site':<{width}}  {'kind':<10} {'layout':<6} {'C':>5}  {'HxW':>9}  stage  depth")
    for i, s in enumerate(sites):
        if ungridded(s.layout, s.spatial):
            hw = f"L={s.spatial[0]}"
        else:
            hw = ("x".join(map(str, s.spatial)) or "-") + (f"+{s.prefix_tokens}" if s.prefix_tokens else "")
        print(
            f"{i:>3}  {s.name:<{width}}  {s.kind:<10} {s.layout:<6} {s.channels:>5}  {hw:>9}  {s.stage:>5}  "
            f"{s.relative_depth:.3f}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparta", description="Activation portability studies for adversarially robust CNNs."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded = set()
    for ep in sorted(entry_points(group="sparta.commands"), key=lambda e: e.name):
        if ep.name in loaded:
            continue
        try:
            register = ep.load()
        except ImportError as exc:  # one broken plugin must not take the whole CLI down
            print(f"sparta: command {ep.name!r} is unavailable ({exc})", file=sys.stderr)
            continue
        register(subparsers)
        loaded.add(ep.name)
    if "sites" not in loaded:  # running from a source tree without installed metadata
        register_sites(subparsers)
    return parser


def run_command(argv: Sequence[str]) -> int:
    """Run one ``sparta`` sub-command in-process and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT (128 + 2)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sparta`` entry point: a user error is one line and exit code 2, Ctrl-C one line and 130.

    Every write of the project is atomic and every run and study resumes, so an interrupted command
    loses nothing it had finished; running it again picks up where it stopped.
    """
    try:
        return run_command(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("sparta: interrupted; run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, KeyError, OSError) as exc:  # OSError: a missing, unreadable or unwritable path
        print(f"sparta: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
